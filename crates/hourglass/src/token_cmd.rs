//! `hourglass token new`: a bearer token and its entry for the nodes' tokens file
//! (`auth.tokens_file`). The node keeps only the token's hash; the secret is shown once. Also
//! the checking and printing of that file's entries `hourglass cert client` shares.

use hourglass_server::auth::{new_token, token_hash, Role, TokenEntry, TokenSet};
use serde_json::json;

use crate::cert_cmd::check_name;
use crate::cli::TokenCommand;
use crate::{usage, Failure};

pub fn run(cmd: TokenCommand, json: bool) -> Result<(), Failure> {
    let TokenCommand::New {
        name,
        role,
        prefixes,
        queues,
    } = cmd;
    check_name(&name).map_err(usage)?;
    let role = Role::from(role);
    let token = new_token()?;
    let entry = TokenEntry {
        name,
        role,
        sha256: token_hash(&token),
        prefixes,
        queues,
    };
    let toml = entry.to_toml();
    check_entry(&toml)?;
    if json {
        println!(
            "{}",
            json!({ "name": entry.name, "role": role.as_str(), "token": token, "entry": toml })
        );
    } else {
        println!("{token}");
        println!(
            "# The token above is shown only this once: give it to {} (HOURGLASS_TOKEN or \
             --token-file).",
            entry.name
        );
        print_entry(&toml);
    }
    Ok(())
}

/// The nodes' own check of the tokens file, on one entry: what they would refuse is refused
/// here, before anyone copies it.
pub fn check_entry(toml: &str) -> Result<(), Failure> {
    TokenSet::parse(toml).map(drop).map_err(usage)
}

/// Prints a tokens file entry and where it goes.
pub fn print_entry(toml: &str) {
    println!(
        "# Add this entry to the tokens file (auth.tokens_file) of every node; nodes reread it \
         within seconds."
    );
    print!("{toml}");
}
