//! Proves the Redis harness (tests/support/redis.rs) does what the Redis-backed tests rely on:
//! a standalone server that can be killed and restarted on the same port, a three-primary
//! cluster that serves redirected commands, value scans that see every key's bytes verbatim, and
//! no server left running once its handle is dropped.

use std::net::TcpStream;

use crate::support::redis::{RedisCluster, RedisServer};

#[tokio::test]
async fn standalone_set_get_kill_and_restart_on_the_same_port() {
    let mut redis = RedisServer::start().await;
    let port = redis.port();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));

    assert_eq!(redis.cli(&["set", "greeting", "hello"]).await.trim(), "OK");
    assert_eq!(redis.cli(&["get", "greeting"]).await.trim(), "hello");

    redis.kill().await;
    assert!(!redis.ping().await, "a killed server must not answer");
    assert_ne!(redis.cli(&["ping"]).await.trim(), "PONG");

    redis.restart().await;
    assert_eq!(redis.port(), port, "restart keeps the port");
    assert!(redis.ping().await);
    assert_eq!(redis.cli(&["ping"]).await.trim(), "PONG");
    // Nothing is persisted, so a restart is a crash that loses everything.
    assert_eq!(redis.cli(&["get", "greeting"]).await.trim(), "");
    assert!(redis.all_keys_and_values().await.is_empty());
}

#[tokio::test]
async fn all_keys_and_values_returns_every_value_verbatim() {
    let redis = RedisServer::start().await;
    // Longer than 20 bytes: DUMP would LZF-compress it, the scan must not.
    let secret = "sk-planted-secret-0123456789-abcdefghijklmnop";
    redis.cli(&["set", "plain", secret]).await;
    redis
        .cli(&["hset", "record", "token", secret, "other", "x"])
        .await;
    redis.cli(&["rpush", "queue", "a", secret]).await;

    let all = redis.all_keys_and_values().await;
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["plain", "queue", "record"], "sorted by key");
    assert_eq!(all[0].1, secret.as_bytes(), "a string is exactly its bytes");
    for (key, value) in &all {
        let text = String::from_utf8_lossy(value);
        assert!(text.contains(secret), "{key}: {text:?} lacks the secret");
    }
    let hash = String::from_utf8_lossy(&all[2].1);
    assert!(hash.contains("token") && hash.contains("other"), "{hash:?}");
}

#[tokio::test]
async fn dropping_a_server_stops_it() {
    let redis = RedisServer::start().await;
    let port = redis.port();
    assert!(redis.ping().await);
    drop(redis);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens on {port} once the handle is dropped"
    );
}

#[tokio::test]
async fn three_primary_cluster_serves_redirected_commands() {
    let cluster = RedisCluster::start(3).await;
    let ports = cluster.ports();
    assert_eq!(ports.len(), 3);
    let seeds: Vec<String> = ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    assert_eq!(cluster.seeds(), seeds.join(","));

    assert_eq!(
        cluster.cli(0, &["-c", "set", "k{a}", "v"]).await.trim(),
        "OK"
    );
    for node in 0..3 {
        // Whichever node is asked, -c follows the redirect to the slot's owner.
        assert_eq!(cluster.cli(node, &["-c", "get", "k{a}"]).await.trim(), "v");
        let info = cluster.cli(node, &["cluster", "info"]).await;
        assert!(info.contains("cluster_state:ok"), "node {node}: {info}");
    }

    let all = cluster.all_keys_and_values().await;
    assert_eq!(all, vec![("k{a}".to_owned(), b"v".to_vec())]);
}
