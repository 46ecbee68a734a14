//! The test users' `/sync` misses nothing: the negative checks of the other tests ("the bot
//! sent no X") read a test user's history, which a limited timeline (10 events by default)
//! would leave with a gap.

mod support;

use support::*;

/// A burst of events sent while the reader is not syncing is seen whole by one `catch_up`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_sees_every_event_of_a_burst() {
    let mut reader = TestUser::new("reader").await;
    let writer = TestUser::new("writer").await;
    let room = reader.create_dm(&writer.user_id).await;
    writer.join(&room).await;
    reader.wait_joined(&room, &writer.user_id, T).await;
    let n = 40;
    for i in 0..n {
        say(&writer, &room, &format!("burst {i}")).await;
    }
    // Barrier: the last message of the burst.
    let last = format!("burst {}", n - 1);
    reader
        .wait_for("the last message of the burst", T, |s| {
            s.event["content"]["body"] == last.as_str()
        })
        .await;
    let seen: Vec<_> = reader
        .history
        .iter()
        .filter_map(|s| s.event["content"]["body"].as_str())
        .filter(|b| b.starts_with("burst "))
        .map(str::to_owned)
        .collect();
    let want: Vec<_> = (0..n).map(|i| format!("burst {i}")).collect();
    assert_eq!(seen, want);
}
