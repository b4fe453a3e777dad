use super::host_port;

#[test]
fn connection_urls_give_host_and_port() {
    assert_eq!(
        host_port("postgres://10.0.0.5:5433/postgres"),
        Some(("10.0.0.5".into(), 5433))
    );
    assert_eq!(
        host_port("postgresql://u:p@db.example:6000/x?sslmode=require"),
        Some(("db.example".into(), 6000))
    );
    assert_eq!(
        host_port("postgres://127.0.0.1/postgres"),
        Some(("127.0.0.1".into(), 5432))
    );
    assert_eq!(
        host_port("postgres://[::1]:5432/postgres"),
        Some(("::1".into(), 5432))
    );
    assert_eq!(host_port("not a url"), None);
    assert_eq!(host_port("postgres://:5432/"), None);
    assert_eq!(host_port("postgres://h:notaport/"), None);
}
