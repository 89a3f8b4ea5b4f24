//! A WASI 0.3 command (`wasi:cli/run@0.3`): writes its arguments to stdout, one per line, through a
//! stream, and fails (exit status 1) when the first argument is `fail`. `ls DIR` instead lists `DIR`
//! (relative to the first preopened directory, `.` for the directory itself) with WASI 0.3's
//! `read-directory`, and fails with the error code when the listing is refused.

use wasip3::filesystem::types::{DescriptorFlags, OpenFlags, PathFlags};

wasip3::cli::command::export!(HelloCli);

struct HelloCli;

impl wasip3::exports::cli::run::Guest for HelloCli {
    async fn run() -> Result<(), ()> {
        let args = wasip3::cli::environment::get_arguments();
        let (text, ok) = match args.get(1).map(String::as_str) {
            Some("ls") => match list(args.get(2).map_or(".", String::as_str)).await {
                Ok(names) => (names, true),
                Err(e) => (format!("ls: {e}\n"), false),
            },
            first => {
                let mut text = String::new();
                for (i, arg) in args.iter().enumerate() {
                    text.push_str(&format!("arg[{i}]={arg}\n"));
                }
                (text, first != Some("fail"))
            }
        };
        let (mut tx, rx) = wasip3::wit_stream::new();
        // The host reads the stream from here on, so the write below completes.
        let written = wasip3::cli::stdout::write_via_stream(rx);
        tx.write_all(text.into_bytes()).await;
        drop(tx);
        written.await.map_err(|_| ())?;
        if ok { Ok(()) } else { Err(()) }
    }
}

/// The names in `path` under the first preopened directory, one per line, sorted.
async fn list(path: &str) -> Result<String, String> {
    let preopens = wasip3::filesystem::preopens::get_directories();
    let (root, _) = preopens.first().ok_or("no preopened directory")?;
    let opened;
    let dir = if path == "." {
        root
    } else {
        opened = root
            .open_at(
                PathFlags::empty(),
                path.to_string(),
                OpenFlags::DIRECTORY,
                DescriptorFlags::READ,
            )
            .await
            .map_err(|e| format!("open {path}: {e:?}"))?;
        &opened
    };
    let (entries, result) = dir.read_directory();
    let mut names: Vec<String> = entries
        .collect()
        .await
        .into_iter()
        .map(|e| e.name)
        .collect();
    result
        .await
        .map_err(|e| format!("read-directory {path}: {e:?}"))?;
    names.sort();
    Ok(names.into_iter().map(|n| n + "\n").collect())
}
