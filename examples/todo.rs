//! A to-do list on the command line, whose whole state lives in one SQLite file.
//!
//! ```text
//! cargo run --example todo -- add groceries buy milk
//! cargo run --example todo -- list              (every list; `list groceries` for one)
//! cargo run --example todo -- done groceries 1
//! cargo run --example todo -- remove groceries 1
//! ```
//!
//! The file is `todo.db` in the current directory, or the path in the environment variable
//! `TODO_DB`. Items are keyed by `TodoKey { list, id }`, stored as the text `groceries:1` in the
//! table `todos`; the last id handed out in each list is kept in a second table of the same
//! file, `todo_last_id`, so an id is never reused.
//!
//! Exit status: 0 on success, 1 when the command cannot be done (no such item, storage
//! error), 2 for arguments it does not understand.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use persistent_map::{sqlite::SqliteBackend, PersistentKey, PersistentMap};
use serde::{Deserialize, Serialize};

const USAGE: &str = "\
usage: todo add LIST TITLE...   add an item to LIST (created on first use)
       todo list [LIST]         show every list, or only LIST
       todo done LIST ID        mark an item done
       todo remove LIST ID      delete an item
       todo help                show this help

The state is kept in `todo.db` in the current directory, or in the file named by the
environment variable TODO_DB.";

/// One item of one list, stored as `list:id` (`groceries:1`) in the table `todos`.
#[derive(PersistentKey, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[persistent_key(table = "todos")]
struct TodoKey {
    list: String,
    id: u32,
}

impl TodoKey {
    /// How the user names an item: `groceries #1` (the stored text is `groceries:1`).
    fn label(&self) -> String {
        format!("{} #{}", self.list, self.id)
    }
}

/// A list's name, as the key of the table that counts each list's ids.
#[derive(PersistentKey, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[persistent_key(table = "todo_last_id")]
struct ListName(String);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Todo {
    title: String,
    done: bool,
}

#[derive(Debug, PartialEq)]
enum Command {
    Add { list: String, title: String },
    List { list: Option<String> },
    Done(TodoKey),
    Remove(TodoKey),
    Help,
}

/// Arguments that do not make a command; the message says what was expected.
#[derive(Debug)]
struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn usage_error(message: impl Into<String>) -> UsageError {
    UsageError(message.into())
}

fn parse(args: Vec<OsString>) -> Result<Command, UsageError> {
    let args = args
        .into_iter()
        .map(|arg| {
            arg.into_string()
                .map_err(|arg| usage_error(format!("{arg:?} is not valid UTF-8")))
        })
        .collect::<Result<Vec<String>, _>>()?;
    let Some((command, rest)) = args.split_first() else {
        return Err(usage_error("no command given"));
    };
    match (command.as_str(), rest) {
        ("add", [list, title @ ..]) if !title.is_empty() => Ok(Command::Add {
            list: list_name(list)?,
            title: title.join(" "),
        }),
        ("add", _) => Err(usage_error(
            "`add` needs a list and a title, e.g. `todo add groceries buy milk`",
        )),
        ("list", []) => Ok(Command::List { list: None }),
        ("list", [list]) => Ok(Command::List {
            list: Some(list_name(list)?),
        }),
        ("list", _) => Err(usage_error("`list` takes at most one list name")),
        ("done", rest) => item_key("done", rest).map(Command::Done),
        ("remove", rest) => item_key("remove", rest).map(Command::Remove),
        ("help" | "--help" | "-h", []) => Ok(Command::Help),
        (other, _) => Err(usage_error(format!("unknown command `{other}`"))),
    }
}

fn list_name(text: &str) -> Result<String, UsageError> {
    if text.trim().is_empty() {
        return Err(usage_error("a list name cannot be empty"));
    }
    Ok(text.to_owned())
}

/// `LIST ID`, the two arguments of `done` and `remove`.
fn item_key(command: &str, args: &[String]) -> Result<TodoKey, UsageError> {
    let [list, id] = args else {
        return Err(usage_error(format!(
            "`{command}` needs a list and an item id, e.g. `todo {command} groceries 1`"
        )));
    };
    let id = id.parse().map_err(|_| {
        usage_error(format!(
            "`{id}` is not an item id: ids are whole numbers, as `todo list` shows them"
        ))
    })?;
    Ok(TodoKey {
        list: list_name(list)?,
        id,
    })
}

/// The two maps of the app, both in the one database file.
struct Todos {
    items: PersistentMap<TodoKey, Todo, SqliteBackend>,
    last_ids: PersistentMap<ListName, u32, SqliteBackend>,
    path: PathBuf,
}

impl Todos {
    async fn open(path: PathBuf) -> persistent_map::Result<Self> {
        Ok(Self {
            items: PersistentMap::open(&path).await?,
            last_ids: PersistentMap::open(&path).await?,
            path,
        })
    }

    /// Carries out `command`; an `Err` is a message for the user.
    async fn run(&self, command: Command) -> Result<(), Box<dyn std::error::Error>> {
        match command {
            Command::Add { list, title } => self.add(list, title).await,
            Command::List { list } => {
                self.list(list.as_deref());
                Ok(())
            }
            Command::Done(key) => self.done(&key).await,
            Command::Remove(key) => self.remove(&key).await,
            Command::Help => {
                println!("{USAGE}");
                Ok(())
            }
        }
    }

    async fn add(&self, list: String, title: String) -> Result<(), Box<dyn std::error::Error>> {
        // `update` reads and writes the counter as one step: two `add`s never share an id.
        let id = self
            .last_ids
            .update(&ListName(list.clone()), |last| {
                Some(last.copied().unwrap_or(0) + 1)
            })
            .await?
            .expect("the update always stores a value");
        let key = TodoKey { list, id };
        let todo = Todo { title, done: false };
        self.items.insert(key.clone(), todo.clone()).await?;
        println!("added {}: {}", key.label(), todo.title);
        Ok(())
    }

    fn list(&self, only: Option<&str>) {
        let mut items: Vec<(TodoKey, Todo)> = self
            .items
            .iter()
            .filter(|(key, _)| only.is_none_or(|list| key.list == list))
            .collect();
        items.sort_by(|(a, _), (b, _)| (&a.list, a.id).cmp(&(&b.list, b.id)));
        if items.is_empty() {
            match only {
                Some(list) => println!("{list} has no items"),
                None => println!("no items yet; add one with `todo add LIST TITLE`"),
            }
        }
        let mut current_list = None;
        for (key, todo) in &items {
            if current_list != Some(&key.list) {
                println!("{}:", key.list);
                current_list = Some(&key.list);
            }
            let mark = if todo.done { 'x' } else { ' ' };
            println!("  [{mark}] {:>3}  {}", key.id, todo.title);
        }
        let done = items.iter().filter(|(_, todo)| todo.done).count();
        println!(
            "{done} of {} done; stored in {}",
            items.len(),
            self.path.display()
        );
    }

    async fn done(&self, key: &TodoKey) -> Result<(), Box<dyn std::error::Error>> {
        let mut was_done = false;
        let updated = self
            .items
            .update(key, |todo| {
                let mut todo = todo?.clone();
                was_done = todo.done;
                todo.done = true;
                Some(todo)
            })
            .await?;
        match updated {
            None => Err(no_such_item(key)),
            Some(todo) if was_done => {
                println!("{} was already done: {}", key.label(), todo.title);
                Ok(())
            }
            Some(todo) => {
                println!("done {}: {}", key.label(), todo.title);
                Ok(())
            }
        }
    }

    async fn remove(&self, key: &TodoKey) -> Result<(), Box<dyn std::error::Error>> {
        match self.items.remove(key).await? {
            Some(todo) => {
                println!("removed {}: {}", key.label(), todo.title);
                Ok(())
            }
            None => Err(no_such_item(key)),
        }
    }
}

fn no_such_item(key: &TodoKey) -> Box<dyn std::error::Error> {
    format!(
        "{} has no item {} (`todo list {}` shows its items)",
        key.list, key.id, key.list
    )
    .into()
}

fn database_path() -> std::io::Result<PathBuf> {
    let path = std::env::var_os("TODO_DB").unwrap_or_else(|| "todo.db".into());
    std::path::absolute(PathBuf::from(path))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let command = match parse(std::env::args_os().skip(1).collect()) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("error: {error}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let outcome = match database_path() {
        Ok(path) => match Todos::open(path).await {
            Ok(todos) => todos.run(command).await,
            Err(error) => Err(error.into()),
        },
        Err(error) => Err(error.into()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
