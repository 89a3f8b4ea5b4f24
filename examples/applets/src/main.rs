//! The few busybox applets the CRI validation suite (critest) runs in its containers, as one WASI command
//! called by the name it is installed under (or, under another name, with the applet as its first argument,
//! as `busybox APPLET …`): `sh -c SCRIPT` (commands separated by `;`, `&&` and `||`, and
//! `while COMMAND; do …; done`), `sh` (the same, a line at a time from stdin), `echo [-n]`,
//! `sleep N|infinity`, `top` (runs until stopped), `true`, `false`, `exit N`, `cat` (stdin to stdout),
//! `ls [-A] DIR…` and `dd if=/dev/zero of=/dev/null bs=SIZE [count=N]` (which holds a buffer of SIZE, as
//! busybox's does). It is what a wasm runtime runs in place of critest's busybox image; it is not a shell.

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_default();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let code = match name.as_str() {
        "sh" => sh(&args[1..]),
        "echo" | "sleep" | "top" | "true" | "false" | "dd" | "cat" | "ls" => run(&argv),
        _ => match argv.get(1) {
            Some(&"sh") => sh(&args[2..]),
            _ => run(argv.get(1..).unwrap_or_default()),
        },
    };
    exit(code);
}

fn exit(code: u8) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // `std::process::exit` reports only success or failure on wasip2; `exit-with-code` carries the number.
    wasip2::cli::exit::exit_with_code(code);
    unreachable!("exit-with-code returns only if the host lacks it")
}

/// `sh -c SCRIPT`; `sh` alone runs the commands it reads from stdin, a line at a time, until its end, as
/// busybox's does without a terminal (what critest's attach test types into it).
fn sh(args: &[String]) -> u8 {
    match args {
        [flag, script, ..] if flag == "-c" => script_status(script),
        _ => {
            let mut status = 0;
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { break };
                status = script_status(&line);
                // What `echo -n` wrote reaches the reader before the next line is typed.
                let _ = std::io::Write::flush(&mut std::io::stdout());
            }
            status
        }
    }
}

fn script_status(script: &str) -> u8 {
    let tokens = tokenize(script);
    let (commands, _) = parse(&tokens, &[]);
    execute(&commands)
}

/// One applet; `exit` ends the whole script.
fn run(argv: &[&str]) -> u8 {
    match argv {
        [] => 0,
        ["true", ..] => 0,
        ["false", ..] => 1,
        ["exit", rest @ ..] => exit(rest.first().and_then(|c| c.parse().ok()).unwrap_or(0)),
        ["echo", "-n", words @ ..] => {
            print!("{}", words.join(" "));
            0
        }
        ["echo", words @ ..] => {
            println!("{}", words.join(" "));
            0
        }
        ["sleep", "infinity", ..] | ["top", ..] => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        ["sleep", seconds, ..] => match seconds.parse::<f64>() {
            Ok(s) if s >= 0.0 => {
                std::thread::sleep(Duration::from_secs_f64(s));
                0
            }
            _ => {
                eprintln!("sleep: invalid number '{seconds}'");
                1
            }
        },
        ["dd", operands @ ..] => dd(operands),
        ["ls", operands @ ..] => ls(operands),
        ["cat"] => match std::io::copy(&mut std::io::stdin(), &mut std::io::stdout()) {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("cat: {e}");
                1
            }
        },
        [other, ..] => {
            eprintln!(
                "sh: {other}: not found (this image has sh, echo, sleep, top, true, false, exit, cat, dd, ls)"
            );
            127
        }
    }
}

/// `ls [-A] DIR…`: the names in each directory, sorted, one a line; dot files only with `-A`.
fn ls(operands: &[&str]) -> u8 {
    let all = operands.contains(&"-A");
    let dirs: Vec<&str> = operands.iter().copied().filter(|o| *o != "-A").collect();
    let mut status = 0;
    for dir in if dirs.is_empty() { vec!["."] } else { dirs } {
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .filter(|name| all || !name.starts_with('.'))
                    .collect();
                names.sort();
                for name in names {
                    println!("{name}");
                }
            }
            Err(e) => {
                eprintln!("ls: {dir}: {e}");
                status = 2;
            }
        }
    }
    status
}

/// `dd if=/dev/zero of=/dev/null bs=SIZE [count=N]`: copies zeros through a buffer of SIZE bytes, forever
/// without a count.
fn dd(operands: &[&str]) -> u8 {
    let operand = |key: &str| {
        operands
            .iter()
            .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
    };
    if operand("if") != Some("/dev/zero") || operand("of") != Some("/dev/null") {
        eprintln!("dd: only if=/dev/zero of=/dev/null is supported");
        return 1;
    }
    let size = operand("bs").unwrap_or("512");
    let (digits, unit) = size.split_at(
        size.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(size.len()),
    );
    let scale = match unit {
        "" => 1,
        "k" | "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => 0,
    };
    let Some(bytes) = digits
        .parse::<usize>()
        .ok()
        .map(|n| n * scale)
        .filter(|b| *b > 0)
    else {
        eprintln!("dd: invalid bs '{size}'");
        return 1;
    };
    let count = operand("count").and_then(|c| c.parse::<u64>().ok());
    let mut buffer = vec![0u8; bytes];
    let mut copied = 0u64;
    while count.is_none_or(|c| copied < c) {
        // Reading /dev/zero: every byte of the buffer is written, so all of it is really held.
        buffer.iter_mut().for_each(|b| *b = std::hint::black_box(0));
        copied += 1;
    }
    eprintln!("{copied}+0 records in\n{copied}+0 records out");
    0
}

#[derive(Debug)]
enum Command {
    Simple(Vec<String>),
    While(Vec<(Joint, Command)>, Vec<(Joint, Command)>),
}

/// How a command joins the one before it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Joint {
    Always,
    IfOk,
    IfFailed,
}

/// Words, with `;`, `&&` and `||` as words of their own; quotes group and are removed.
fn tokenize(script: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut chars = script.chars().peekable();
    let flush = |word: &mut String, tokens: &mut Vec<String>| {
        if !word.is_empty() {
            tokens.push(std::mem::take(word));
        }
    };
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => quote = Some(c),
            (None, ';' | '\n') => {
                flush(&mut word, &mut tokens);
                tokens.push(";".into());
            }
            (None, '&' | '|') if chars.peek() == Some(&c) => {
                chars.next();
                flush(&mut word, &mut tokens);
                tokens.push(format!("{c}{c}"));
            }
            (None, c) if c.is_whitespace() => flush(&mut word, &mut tokens),
            (None, c) => word.push(c),
        }
    }
    flush(&mut word, &mut tokens);
    tokens
}

/// Commands up to one of `stops` (a keyword at a command's start); returns them and the tokens consumed.
fn parse(tokens: &[String], stops: &[&str]) -> (Vec<(Joint, Command)>, usize) {
    let mut commands = Vec::new();
    let mut joint = Joint::Always;
    let mut i = 0;
    while i < tokens.len() {
        match tokens[i].as_str() {
            ";" => {
                joint = Joint::Always;
                i += 1;
            }
            "&&" => {
                joint = Joint::IfOk;
                i += 1;
            }
            "||" => {
                joint = Joint::IfFailed;
                i += 1;
            }
            word if stops.contains(&word) => return (commands, i),
            "while" => {
                let (condition, used) = parse(&tokens[i + 1..], &["do"]);
                i += 1 + used + 1;
                let (body, used) = parse(&tokens[i.min(tokens.len())..], &["done"]);
                i += used + 1;
                commands.push((joint, Command::While(condition, body)));
            }
            _ => {
                let start = i;
                while i < tokens.len() && ![";", "&&", "||"].contains(&tokens[i].as_str()) {
                    i += 1;
                }
                commands.push((joint, Command::Simple(tokens[start..i].to_vec())));
            }
        }
    }
    (commands, i)
}

fn execute(commands: &[(Joint, Command)]) -> u8 {
    let mut status = 0;
    for (joint, command) in commands {
        let skip = match joint {
            Joint::Always => false,
            Joint::IfOk => status != 0,
            Joint::IfFailed => status == 0,
        };
        if skip {
            continue;
        }
        status = match command {
            Command::Simple(words) => run(&words.iter().map(String::as_str).collect::<Vec<_>>()),
            Command::While(condition, body) => {
                while execute(condition) == 0 {
                    execute(body);
                }
                0
            }
        };
    }
    status
}
