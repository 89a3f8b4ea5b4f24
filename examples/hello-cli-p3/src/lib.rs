//! A WASI 0.3 command (`wasi:cli/run@0.3`): writes its arguments to stdout, one per line, through a
//! stream, and fails (exit status 1) when the first argument is `fail`.

wasip3::cli::command::export!(HelloCli);

struct HelloCli;

impl wasip3::exports::cli::run::Guest for HelloCli {
    async fn run() -> Result<(), ()> {
        let args = wasip3::cli::environment::get_arguments();
        let mut text = String::new();
        for (i, arg) in args.iter().enumerate() {
            text.push_str(&format!("arg[{i}]={arg}\n"));
        }
        let (mut tx, rx) = wasip3::wit_stream::new();
        // The host reads the stream from here on, so the write below completes.
        let written = wasip3::cli::stdout::write_via_stream(rx);
        tx.write_all(text.into_bytes()).await;
        drop(tx);
        written.await.map_err(|_| ())?;
        if args.get(1).map(String::as_str) == Some("fail") {
            return Err(());
        }
        Ok(())
    }
}
