//! SMTP smuggling over a real socket: no bare-LF/CR end-of-data variant may produce a second
//! message, and the connection is closed with 521.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test]
async fn bare_newline_end_of_data_variants_never_produce_a_message() {
    let up = Upstream::start(UpstreamOptions::starttls()).await;
    let gw = Gateway::start(GatewayConfig::new().upstream(&up)).await;
    let variants: [&[u8]; 5] = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r\r\n"];
    for end in variants {
        let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
        assert_eq!(c.cmd("MAIL FROM:<a@example.org>").await.unwrap().0, 250);
        assert_eq!(c.cmd("RCPT TO:<b@x.example>").await.unwrap().0, 250);
        assert_eq!(c.cmd("DATA").await.unwrap().0, 354);
        let mut payload = b"Subject: first\r\n\r\nhello".to_vec();
        payload.extend_from_slice(end);
        payload.extend_from_slice(b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@x.example>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n");
        c.send_raw(&payload).await.unwrap();
        let r = c.read_reply().await.unwrap();
        assert_eq!(r.0, 521, "{end:?}: {r:?}");
        assert!(
            c.read_reply().await.is_err(),
            "{end:?}: the connection must be closed"
        );
    }
    // A sentinel through a clean session: once it arrives, anything queued before it would have too.
    let (mut c, _) = SmtpClient::connect_ehlo(gw.addr()).await.unwrap();
    assert_eq!(
        c.send_message(
            "a@example.org",
            &["b@x.example"],
            b"Subject: sentinel\r\n\r\nok\r\n"
        )
        .await
        .unwrap()
        .0,
        250
    );
    let got = up.wait_for(1, Duration::from_secs(20)).await;
    assert!(!got.is_empty(), "the sentinel never arrived\n{}", gw.logs());
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: sentinel"));
    // The spool empties once every queued message was delivered (or failed): then the upstream
    // has everything the gateway ever accepted.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let list = loop {
        let (ok, list) = gw.cli(&["queue", "list"]);
        assert!(ok, "{list}");
        if list.contains("-- 0 message(s)") || std::time::Instant::now() >= deadline {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(list.contains("-- 0 message(s)"), "{list}");
    let got_all = up.received();
    assert_eq!(
        got_all.len(),
        1,
        "only the sentinel may arrive: {got_all:?}"
    );
}
