//! External test clients (the openai Python SDK, a headless Chromium), located through env
//! vars that `scripts/test` sets after installing them. With `AIGW_REQUIRE_TEST_TOOLS=1`
//! (set by `scripts/test`) a missing tool fails the test instead of skipping it.

/// The path in `var`, or `None` (after saying so) when the tool is not installed here.
pub fn locate(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(path) if !path.is_empty() => Some(path),
        _ => {
            assert!(
                std::env::var("AIGW_REQUIRE_TEST_TOOLS").is_err(),
                "AIGW_REQUIRE_TEST_TOOLS is set but {var} is not"
            );
            eprintln!("skipping: {var} not set (scripts/test installs and sets it)");
            None
        }
    }
}
