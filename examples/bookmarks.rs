//! Bookmarks on the command line, with the blocking API: no async runtime, no `.await`.
//!
//! ```text
//! cargo run --example bookmarks -- add rust https://www.rust-lang.org
//! cargo run --example bookmarks -- open rust      (prints the URL and counts the visit)
//! cargo run --example bookmarks -- list
//! cargo run --example bookmarks -- remove rust
//! ```
//!
//! The bookmarks live in `bookmarks.db` in the current directory, in the table `bookmarks`,
//! keyed by the bookmark's name. The key type derives `PersistentKey` with `serde`, so it needs
//! no serde derive of its own.
//!
//! Exit status: 0 on success, 1 when the command cannot be done (no such bookmark, storage
//! error), 2 for arguments it does not understand.

use std::process::ExitCode;

use persistent_map::blocking::PersistentMap;
use persistent_map::sqlite::SqliteBackend;
use persistent_map::PersistentKey;
use serde::{Deserialize, Serialize};

const DATABASE: &str = "bookmarks.db";

const USAGE: &str = "\
usage: bookmarks add NAME URL    add (or replace) a bookmark
       bookmarks open NAME       print its URL and count the visit
       bookmarks list            show every bookmark, most visited first
       bookmarks remove NAME     delete a bookmark";

/// A bookmark's name, stored as itself in the table `bookmarks`.
#[derive(PersistentKey, Clone, Debug, PartialEq, Eq, Hash)]
#[persistent_key(table = "bookmarks", serde)]
struct Name(String);

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Bookmark {
    url: String,
    visits: u32,
}

type Bookmarks = PersistentMap<Name, Bookmark, SqliteBackend>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let command = match args.as_slice() {
        ["add", name, url] => Command::Add(Name(name.to_string()), url.to_string()),
        ["open", name] => Command::Open(Name(name.to_string())),
        ["list"] => Command::List,
        ["remove", name] => Command::Remove(Name(name.to_string())),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    // No runtime here: the blocking map brings its own, and each write returns once it is
    // committed to the file.
    let outcome = Bookmarks::open(DATABASE)
        .map_err(|error| format!("cannot open {DATABASE}: {error}"))
        .and_then(|bookmarks| run(&bookmarks, command));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("bookmarks: {message}");
            ExitCode::FAILURE
        }
    }
}

enum Command {
    Add(Name, String),
    Open(Name),
    List,
    Remove(Name),
}

fn run(bookmarks: &Bookmarks, command: Command) -> Result<(), String> {
    match command {
        Command::Add(name, url) => {
            let bookmark = Bookmark { url, visits: 0 };
            let replaced = bookmarks
                .insert(name.clone(), bookmark)
                .map_err(|error| error.to_string())?;
            let verb = if replaced.is_some() {
                "replaced"
            } else {
                "added"
            };
            println!("{verb} {}", name.0);
        }
        Command::Open(name) => {
            // `update` may call the closure more than once: it only computes the new value.
            let opened = bookmarks
                .update(&name, |old| {
                    old.map(|bookmark| Bookmark {
                        visits: bookmark.visits + 1,
                        ..bookmark.clone()
                    })
                })
                .map_err(|error| error.to_string())?
                .ok_or_else(|| format!("no bookmark named {}", name.0))?;
            println!("{} (visit {})", opened.url, opened.visits);
        }
        Command::List => {
            let mut all: Vec<(Name, Bookmark)> = bookmarks.iter().collect();
            all.sort_by(|(a_name, a), (b_name, b)| {
                b.visits
                    .cmp(&a.visits)
                    .then_with(|| a_name.0.cmp(&b_name.0))
            });
            for (name, bookmark) in &all {
                println!("{:>4}  {}  {}", bookmark.visits, name.0, bookmark.url);
            }
            println!("{} bookmark(s)", all.len());
        }
        Command::Remove(name) => match bookmarks.remove(&name) {
            Ok(Some(_)) => println!("removed {}", name.0),
            Ok(None) => return Err(format!("no bookmark named {}", name.0)),
            Err(error) => return Err(error.to_string()),
        },
    }
    Ok(())
}
