//! The egress policy against real sockets: refused destinations never see a connection,
//! whatever form the address takes, however the name resolves, wherever a redirect points.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, response::Redirect, routing::get};
use waypost_core::ErrorCode;
use waypost_egress::{
    ClientOptions, EgressClient, EgressPolicy, Lookup, SendError, SystemLookup, internal_reason,
};

/// Fixed answers for test names; anything else goes to the system resolver (`localhost`).
struct FakeDns(HashMap<&'static str, Vec<IpAddr>>);

impl Lookup for FakeDns {
    fn lookup(
        &self,
        host: String,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> {
        match self.0.get(host.trim_end_matches('.')) {
            Some(ips) => {
                let ips = ips.clone();
                Box::pin(async move { Ok(ips) })
            }
            None => SystemLookup.lookup(host),
        }
    }
}

fn fake_dns() -> Arc<FakeDns> {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    Arc::new(FakeDns(HashMap::from([
        ("public.test", vec![ip("127.0.0.2")]),
        ("sim.test", vec![ip("127.0.0.1")]),
        ("private.test", vec![ip("10.1.1.1")]),
        ("rebind.test", vec![ip("127.0.0.1")]),
        ("metadata.test", vec![ip("169.254.169.254")]),
        ("mixed.test", vec![ip("127.0.0.1"), ip("10.0.0.1")]),
        ("ula.test", vec![ip("fd00::1")]),
        ("mapped.test", vec![ip("::ffff:192.168.0.1")]),
    ])))
}

fn client(allow: &[&str]) -> EgressClient {
    EgressClient::build(
        EgressPolicy::new(allow).unwrap(),
        ClientOptions {
            connect_timeout: Duration::from_secs(2),
            timeout: Some(Duration::from_secs(5)),
            pool_max_idle_per_host: 0,
        },
        fake_dns(),
    )
    .unwrap()
}

/// A listener that counts every connection it accepts, answering each with a small page.
struct Trap {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

async fn counting_listener(bind: &str) -> Trap {
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    Trap { addr, accepted }
}

/// A "public" server (127.0.0.2, which the tests allow) that redirects where it is told.
async fn redirector(trap_port: u16) -> SocketAddr {
    let to_loopback = format!("http://127.0.0.1:{trap_port}/");
    let to_localhost = format!("http://localhost:{trap_port}/");
    let app = Router::new()
        .route("/ok", get(|| async { "public" }))
        .route(
            "/to-loopback",
            get(move || async move { Redirect::temporary(&to_loopback) }),
        )
        .route(
            "/to-localhost",
            get(move || async move { Redirect::to(&to_localhost) }),
        )
        .route(
            "/loop/{n}",
            get(
                |axum::extract::Path(n): axum::extract::Path<u32>| async move {
                    Redirect::temporary(&format!("/loop/{}", n + 1))
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn refused(client: &EgressClient, url: &str) -> bool {
    match client.get(url).send().await {
        Err(SendError::Refused(refused)) => {
            assert!(
                !refused.to_string().contains("secret"),
                "{url}: the refusal must not echo the URL's credentials or path: {refused}"
            );
            true
        }
        Err(SendError::Http(err)) => panic!("{url}: expected a refusal, got {err:?}"),
        Ok(response) => panic!("{url}: expected a refusal, got {}", response.status()),
    }
}

#[tokio::test]
async fn internal_destinations_are_refused_in_every_form_and_nothing_connects() {
    let trap = counting_listener("127.0.0.1:0").await;
    let p = trap.addr.port();
    let client = client(&["127.0.0.2/32"]);
    let local_forms = [
        format!("http://127.0.0.1:{p}/"),
        format!("http://127.1:{p}/"),
        format!("http://2130706433:{p}/"),
        format!("http://0x7f.1:{p}/"),
        format!("http://0x7f000001:{p}/"),
        format!("http://017700000001:{p}/"),
        format!("http://0177.0.0.1:{p}/"),
        format!("http://127.0.0.1.:{p}/"),
        format!("http://[::1]:{p}/"),
        format!("http://[::ffff:127.0.0.1]:{p}/"),
        format!("http://[0:0:0:0:0:ffff:7f00:1]:{p}/"),
        format!("http://[::]:{p}/"),
        format!("http://0.0.0.0:{p}/"),
        format!("http://0:{p}/"),
        format!("http://good@127.0.0.1:{p}/"),
        format!("http://good:secret@127.0.0.1:{p}/secret-path?token=secret"),
        format!("http://127.0.0.1:{p}#@good.example/"),
        format!("http://localhost:{p}/"),
        format!("http://localhost.:{p}/"),
        format!("http://LOCALHOST:{p}/"),
        format!("http://rebind.test:{p}/"),
        format!("http://mixed.test:{p}/"),
        format!("https://127.0.0.1:{p}/"),
    ];
    let elsewhere = [
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://224.0.0.1/",
        "http://255.255.255.255/",
        "http://192.0.2.10/",
        "http://198.51.100.7/",
        "http://203.0.113.9/",
        "http://198.18.0.1/",
        "http://240.0.0.1/",
        "http://[fc00::1]/",
        "http://[fd12:3456::1]/",
        "http://[fe80::1]/",
        "http://[ff02::1]/",
        "http://[::127.0.0.1]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[2001:db8::1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://private.test/",
        "http://metadata.test/",
        "http://ula.test/",
        "http://mapped.test/",
        "ftp://public.test/",
    ];
    let mut count = 0;
    for url in local_forms.iter().map(String::as_str).chain(elsewhere) {
        assert!(refused(&client, url).await);
        count += 1;
    }
    assert!(count >= 40, "the table covers {count} destinations");
    assert_eq!(
        trap.accepted.load(Ordering::SeqCst),
        0,
        "a refused destination was connected to"
    );
}

#[tokio::test]
async fn refused_destinations_become_egress_refused_errors() {
    let client = client(&[]);
    let err = client
        .get("http://169.254.169.254/")
        .send()
        .await
        .unwrap_err();
    let err = err.into_error("the provider");
    assert_eq!(err.code(), ErrorCode::EgressRefused);
    assert!(err.to_string().contains("169.254.169.254"), "{err}");
    let err = client.check("http://localhost:1/").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::EgressRefused);
    assert!(
        client.check("http://public.test/").await.is_err(),
        "127.0.0.2 is not allowed here"
    );
}

#[tokio::test]
async fn redirects_are_checked_at_every_hop() {
    let trap = counting_listener("127.0.0.1:0").await;
    let public = redirector(trap.addr.port()).await;
    let client = client(&["127.0.0.2/32"]);
    let base = format!("http://public.test:{}", public.port());

    let ok = client.get(format!("{base}/ok")).send().await.unwrap();
    assert_eq!(
        ok.text().await.unwrap(),
        "public",
        "an allowed destination is reached"
    );
    assert!(refused(&client, &format!("{base}/to-loopback")).await);
    assert!(refused(&client, &format!("{base}/to-localhost")).await);
    assert_eq!(trap.accepted.load(Ordering::SeqCst), 0);

    let looping = client
        .get(format!("{base}/loop/0"))
        .send()
        .await
        .unwrap_err();
    match looping {
        SendError::Http(err) => assert!(err.is_redirect(), "{err:?}"),
        SendError::Refused(r) => panic!("not a refusal: {r}"),
    }
    client.check(&format!("{base}/ok")).await.unwrap();
}

#[tokio::test]
async fn operators_allow_networks_names_and_single_ports() {
    let trap = counting_listener("127.0.0.1:0").await;
    let other = counting_listener("127.0.0.1:0").await;
    let p = trap.addr.port();

    // A host name: whatever it resolves to.
    let by_name = client(&["sim.test"]);
    let _ = by_name.get(format!("http://sim.test:{p}/")).send().await;
    assert_eq!(trap.accepted.load(Ordering::SeqCst), 1);
    assert!(refused(&by_name, &format!("http://127.0.0.1:{p}/")).await);

    // One address and port: that port only.
    let policy = EgressPolicy::new::<&str>(&[])
        .unwrap()
        .allowing_socket(trap.addr);
    let by_socket = EgressClient::build(policy, ClientOptions::default(), fake_dns()).unwrap();
    let _ = by_socket.get(format!("http://127.0.0.1:{p}/")).send().await;
    assert_eq!(trap.accepted.load(Ordering::SeqCst), 2);
    assert!(
        refused(
            &by_socket,
            &format!("http://127.0.0.1:{}/", other.addr.port())
        )
        .await
    );
    assert_eq!(other.accepted.load(Ordering::SeqCst), 0);

    // A network: every address in it, by literal or by name.
    let by_net = client(&["127.0.0.0/8"]);
    let _ = by_net.get(format!("http://localhost:{p}/")).send().await;
    let _ = by_net.get(format!("http://2130706433:{p}/")).send().await;
    assert_eq!(trap.accepted.load(Ordering::SeqCst), 4);
}

#[test]
fn public_addresses_pass_and_the_reasons_are_named() {
    for public in [
        "93.184.216.34",
        "8.8.8.8",
        "2606:4700:4700::1111",
        "::ffff:1.1.1.1",
    ] {
        assert_eq!(internal_reason(public.parse().unwrap()), None, "{public}");
    }
    for (ip, why) in [
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("100.100.100.100", "carrier-grade NAT"),
        ("::1", "unspecified, loopback or IPv4-compatible"),
        ("fd00::1", "unique local"),
    ] {
        assert_eq!(internal_reason(ip.parse().unwrap()), Some(why), "{ip}");
    }
}
