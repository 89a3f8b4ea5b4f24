//! The runtime's knob model as `wasmhttp run` flags: one `--<knob>` per entry of [`KNOBS`], so flag names,
//! help texts and value parsing come from the same place as the annotations and the node TOML.

use clap::builder::ValueParser;
use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};
use wasmhttp_runtime::{KNOBS, Knob, Limits};

/// The knob flags given on the command line (unset knobs stay `None`).
#[derive(Debug, Clone, Default)]
pub struct KnobFlags(pub Limits);

fn parser(knob: &'static Knob) -> ValueParser {
    ValueParser::new(move |text: &str| -> Result<String, String> {
        knob.set(&mut Limits::default(), text)?;
        Ok(text.to_string())
    })
}

impl Args for KnobFlags {
    fn augment_args(command: Command) -> Command {
        KNOBS.iter().fold(command, |command, knob| {
            let help = match knob.default_text() {
                Some(default) => format!("{} [default: {default}]", knob.doc.trim()),
                None => knob.doc.trim().to_string(),
            };
            let command = command.arg(
                Arg::new(knob.name)
                    .long(knob.name)
                    .value_name(knob.form.metavar)
                    .help(help)
                    .value_parser(parser(knob)),
            );
            match knob.old_flag {
                Some(old) => command.arg(
                    Arg::new(old)
                        .long(old)
                        .hide(true)
                        .value_parser(parser(knob))
                        .conflicts_with(knob.name),
                ),
                None => command,
            }
        })
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}

impl FromArgMatches for KnobFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = KnobFlags::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for knob in KNOBS {
            let mut given = matches.get_one::<String>(knob.name);
            if let Some(old) = knob.old_flag
                && let Some(value) = matches.get_one::<String>(old)
            {
                eprintln!(
                    "wasmhttp: --{old} is deprecated and will be removed in the next release: use --{}",
                    knob.name
                );
                given = Some(value);
            }
            if let Some(text) = given {
                // Already validated by the value parser.
                knob.set(&mut self.0, text)
                    .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::Duration;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        knobs: KnobFlags,
    }

    #[test]
    fn every_knob_is_a_flag_and_old_names_still_work() {
        let cli = Cli::try_parse_from([
            "t",
            "--memory",
            "64Mi",
            "--request-timeout",
            "2s",
            "--queue",
            "3",
            "--max-body",
            "1Mi",
        ])
        .unwrap();
        let limits = cli.knobs.0;
        assert_eq!(limits.memory, Some(64 << 20));
        assert_eq!(limits.request_timeout, Some(Duration::from_secs(2)));
        assert_eq!(limits.queue_depth, Some(3));
        assert_eq!(limits.max_request_body, Some(1 << 20));
        for knob in KNOBS {
            let flag = format!("--{}", knob.name);
            assert!(
                Cli::try_parse_from(["t", flag.as_str(), "nonsense"]).is_err(),
                "{flag} validates its value"
            );
        }
        let both = Cli::try_parse_from(["t", "--queue", "1", "--queue-depth", "2"]);
        assert!(both.is_err(), "an old and a new name together are refused");
        let err = Cli::try_parse_from(["t", "--cpus", "0"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("--cpus") && err.contains("expected a number of cores"),
            "{err}"
        );
    }
}
