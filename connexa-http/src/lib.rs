//! `connexa-http`: the REST API and the web console.

pub mod console;
