//! A WASI command: prints its args and environment, then exits with the code (0–255) given as its first argument.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    for (i, arg) in args.iter().enumerate() {
        println!("arg[{i}]={arg}");
    }
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    env.sort();
    for (k, v) in env {
        println!("env {k}={v}");
    }
    eprintln!("hello-cli done");
    let code = args.get(1).and_then(|a| a.parse::<u8>().ok()).unwrap_or(0);
    std::io::Write::flush(&mut std::io::stdout()).expect("flush stdout");
    // `std::process::exit` can only report success or failure on wasip2; `exit-with-code` (WASI 0.2.12)
    // carries the number.
    wasip2::cli::exit::exit_with_code(code);
    unreachable!("exit-with-code returns only if the host lacks it");
}
