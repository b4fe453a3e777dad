use super::host_port;

#[test]
fn connection_urls_give_host_and_port() {
    let cases = [
        (
            "postgres://10.0.0.5:5433/postgres",
            Some(("10.0.0.5", 5433)),
        ),
        (
            "postgresql://u:p@db.example:6000/x?sslmode=require",
            Some(("db.example", 6000)),
        ),
        ("postgres://127.0.0.1/postgres", Some(("127.0.0.1", 5432))),
        ("postgres://[::1]:5432/postgres", Some(("::1", 5432))),
        ("not a url", None),
        ("postgres://:5432/", None),
        ("postgres://h:notaport/", None),
    ];
    for (url, expected) in cases {
        let expected = expected.map(|(host, port)| (host.to_owned(), port));
        assert_eq!(host_port(url), expected, "{url}");
    }
}
