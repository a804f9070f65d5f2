//! Shows how connexa-core decides statuses: feed a few events to `transition`
//! and print what happens. Run: `cargo run -p example-transitions`.

use connexa_core::domain::{
    Event, Failure, Level, Outcome, Secret, ServiceEndpoint, Status, transition,
};

fn main() {
    let endpoint = ServiceEndpoint {
        host: "127.0.0.1".into(),
        port: 10800,
        username: "demo".into(),
        password: Secret::new("demo-password"),
    };
    let story = [
        Event::Tested(Outcome::success(Level::Light)),
        Event::Tested(Outcome::success(Level::Speed)),
        Event::ServiceStartFailed("port 10800 in use".into()),
        Event::ServiceStarted(endpoint),
        Event::HealthFailed("tunnel down".into()),
        Event::Tested(Outcome::failed(Level::None, Failure::Refused)),
        Event::HealthOk,
    ];
    let mut status = Status::NotTested;
    for event in &story {
        let next = match transition(status, event) {
            Ok(next) => next,
            Err(refused) => {
                println!("{status:>11} --{:<20}--> refused: {refused}", event.kind());
                continue;
            }
        };
        println!("{status:>11} --{:<20}--> {next}", event.kind().as_str());
        status = next;
    }
    assert!(status.is_verified(), "a verified node is never demoted");
}
