//! `wasmhttp image`: build OCI images of wasm services, push them to a registry and pull them back.

mod build;
mod client;
mod credentials;
mod layout;
mod pull;
mod push;
mod registry;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build an OCI image-layout tar from a .wasm file.
    Build(build::BuildArgs),
    /// Push an image-layout tar to a registry.
    Push(push::PushArgs),
    /// Pull an image from a registry into an image-layout tar (for `ctr image import`).
    Pull(pull::PullArgs),
    /// Make an Ed25519 key to sign precompiled code with (`build --sign`); prints the public key.
    Keygen(build::KeygenArgs),
}

pub fn run(command: ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::Build(args) => build::build(args),
        ImageCommand::Push(args) => push::push(args),
        ImageCommand::Pull(args) => pull::pull(args),
        ImageCommand::Keygen(args) => build::keygen(args),
    }
}
