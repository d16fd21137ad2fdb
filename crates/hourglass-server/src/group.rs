//! A partition's Raft group: run by the host, proposed to by the engine, reached by routing
//! and the peer transport.

use hourglass_types::TypeConfig;
use openraft::Raft;

pub type Group = Raft<TypeConfig>;
