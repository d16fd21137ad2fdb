//! `hourglass token new`: a bearer token and its entry for the nodes' tokens file
//! (`auth.tokens_file`). The node keeps only the token's hash; the secret is shown once.

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
    // The nodes' own check of the file: what it refuses is refused here, before anyone
    // copies it.
    TokenSet::parse(&toml).map_err(usage)?;
    if json {
        println!(
            "{}",
            json!({ "name": entry.name, "role": role.as_str(), "token": token, "entry": toml })
        );
    } else {
        println!("{token}");
        println!(
            "# The token above is shown only this once: give it to {} (HOURGLASS_TOKEN or \
             --token-file).\n# Add this entry to the tokens file (auth.tokens_file) of every \
             node; nodes reread it within seconds.",
            entry.name
        );
        print!("{toml}");
    }
    Ok(())
}
