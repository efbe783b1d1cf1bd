//! A real headless Chromium, driven over WebDriver: `chromedriver` on a free loopback port,
//! spoken to with plain HTTP and JSON. One driver and one browser session per [`Browser`];
//! both end when it is dropped.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// How long one WebDriver command may take (a page load included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The key under which WebDriver names an element.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium window of 1280×900.
pub struct Browser {
    driver: Child,
    /// `http://127.0.0.1:{port}/session/{id}`.
    session: String,
    http: reqwest::Client,
    driver_logs: Arc<Mutex<Vec<String>>>,
}

/// An element of the current page.
#[derive(Clone, Debug)]
pub struct Element(String);

/// An error WebDriver answered, such as `no such element` or `stale element reference`.
#[derive(Debug)]
pub struct WebDriverError {
    pub error: String,
    pub message: String,
}

impl Browser {
    /// Starts `chromedriver` and a browser session.
    pub async fn start() -> Browser {
        // With `--port=0` chromedriver picks a port itself, and on a busy machine the one it
        // picks can be taken ("IPv4 port not available"): start it again then.
        let mut attempts = 0;
        let (driver, driver_logs, port) = loop {
            attempts += 1;
            match start_driver() {
                Ok(started) => break started,
                Err(logs) if attempts < 5 && logs.contains("port not available") => continue,
                Err(logs) => panic!("chromedriver did not say its port:\n{logs}"),
            }
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(COMMAND_TIMEOUT)
            .build()
            .unwrap();
        let root = format!("http://127.0.0.1:{port}");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                "--disable-dev-shm-usage", "--disable-crash-reporter", "--no-first-run",
                "--disable-background-networking", "--disable-extensions",
            ]},
            // An alert no test expects fails the next command instead of being answered.
            "unhandledPromptBehavior": "ignore",
        }}});
        let mut browser = Browser {
            driver,
            session: String::new(),
            http,
            driver_logs,
        };
        let created = browser
            .send(
                reqwest::Method::POST,
                &format!("{root}/session"),
                Some(capabilities),
            )
            .await
            .unwrap_or_else(|error| panic!("no browser session: {error:?}"));
        let id = created["sessionId"].as_str().unwrap();
        browser.session = format!("{root}/session/{id}");
        browser
    }

    /// Sends one WebDriver command; its `value`, or the error WebDriver answered.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|error| WebDriverError {
            error: "no answer".into(),
            message: format!("{error}; chromedriver: {}", self.driver_logs()),
        })?;
        let ok = response.status().is_success();
        let answer: Value = response.json().await.map_err(|error| WebDriverError {
            error: "not JSON".into(),
            message: error.to_string(),
        })?;
        let value = answer.get("value").cloned().unwrap_or(Value::Null);
        if ok {
            Ok(value)
        } else {
            Err(WebDriverError {
                error: value["error"].as_str().unwrap_or("unknown").to_owned(),
                message: value["message"].as_str().unwrap_or_default().to_owned(),
            })
        }
    }

    /// A command of this session, at `path` below it.
    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        self.send(method, &format!("{}{path}", self.session), body)
            .await
    }

    fn driver_logs(&self) -> String {
        self.driver_logs.lock().unwrap().join("\n")
    }

    /// Opens `url` and waits until the document has loaded.
    pub async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .unwrap_or_else(|error| panic!("cannot open {url}: {error:?}"));
    }

    /// The address of the current page.
    pub async fn url(&self) -> String {
        let url = self.command(reqwest::Method::GET, "/url", None).await;
        url.unwrap().as_str().unwrap().to_owned()
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; what it returns.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, WebDriverError> {
        let body = json!({ "script": script, "args": args });
        self.command(reqwest::Method::POST, "/execute/sync", Some(body))
            .await
    }

    /// Waits until `script` returns something other than `null` or `false`, and returns it;
    /// fails after `within`, naming `what` and showing the page's text.
    pub async fn wait_until(&self, what: &str, within: Duration, script: &str) -> Value {
        let deadline = Instant::now() + within;
        loop {
            // An error (an alert open, a page between two documents) counts as not yet.
            match self.execute(script, vec![]).await {
                Ok(Value::Null | Value::Bool(false)) | Err(_) => {}
                Ok(value) => return value,
            }
            if Instant::now() >= deadline {
                panic!(
                    "{what}: not within {within:?}; the page says:\n{}",
                    self.page_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The visible text of the page, for failure messages.
    pub async fn page_text(&self) -> String {
        match self
            .execute("return document.body.innerText;", vec![])
            .await
        {
            Ok(text) => text.as_str().unwrap_or_default().to_owned(),
            Err(error) => format!("(cannot read the page: {error:?})"),
        }
    }

    /// The first element that matches the CSS selector `css`, if any.
    pub async fn find(&self, css: &str) -> Option<Element> {
        let body = json!({ "using": "css selector", "value": css });
        match self
            .command(reqwest::Method::POST, "/element", Some(body))
            .await
        {
            Ok(found) => Some(Element(found[ELEMENT_KEY].as_str().unwrap().to_owned())),
            Err(error) if error.error == "no such element" => None,
            Err(error) => panic!("finding {css}: {error:?}"),
        }
    }

    /// Every element that matches `css`.
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        let body = json!({ "using": "css selector", "value": css });
        let found = self
            .command(reqwest::Method::POST, "/elements", Some(body))
            .await
            .unwrap_or_else(|error| panic!("finding {css}: {error:?}"));
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|e| Element(e[ELEMENT_KEY].as_str().unwrap().to_owned()))
            .collect()
    }

    /// Waits until an element matches `css` and is displayed.
    pub async fn wait_for(&self, css: &str, within: Duration) -> Element {
        let deadline = Instant::now() + within;
        loop {
            if let Some(element) = self.find(css).await {
                if self.displayed(&element).await.unwrap_or(false) {
                    return element;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "no visible {css} within {within:?}; the page says:\n{}",
                    self.page_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An attribute of `element`, `None` when it has none.
    pub async fn attribute(
        &self,
        element: &Element,
        name: &str,
    ) -> Result<Option<String>, WebDriverError> {
        let path = format!("/element/{}/attribute/{name}", element.0);
        let value = self.command(reqwest::Method::GET, &path, None).await?;
        Ok(value.as_str().map(str::to_owned))
    }

    /// The rendered text of `element`.
    pub async fn text(&self, element: &Element) -> Result<String, WebDriverError> {
        let path = format!("/element/{}/text", element.0);
        let value = self.command(reqwest::Method::GET, &path, None).await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// Whether `element` is shown.
    pub async fn displayed(&self, element: &Element) -> Result<bool, WebDriverError> {
        let path = format!("/element/{}/displayed", element.0);
        let value = self.command(reqwest::Method::GET, &path, None).await?;
        Ok(value.as_bool().unwrap_or(false))
    }

    /// Waits until an element matching `css` has `name` equal to `expected`; its text.
    pub async fn wait_attribute(
        &self,
        css: &str,
        name: &str,
        expected: &str,
        within: Duration,
    ) -> String {
        let deadline = Instant::now() + within;
        let mut seen = None;
        loop {
            // The page draws itself again as it refreshes: an element can go stale between
            // finding and reading it, which only means "look again".
            if let Some(element) = self.find(css).await {
                if let Ok(value) = self.attribute(&element, name).await {
                    if value.as_deref() == Some(expected) {
                        if let Ok(text) = self.text(&element).await {
                            return text;
                        }
                    }
                    seen = value;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "{css} did not get {name}={expected:?} within {within:?} (last: {seen:?}); \
                     the page says:\n{}",
                    self.page_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element matching `css`, finding it again when the page redrew it.
    pub async fn click(&self, css: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let element = self.wait_for(css, within).await;
            let path = format!("/element/{}/click", element.0);
            match self
                .command(reqwest::Method::POST, &path, Some(json!({})))
                .await
            {
                Ok(_) => return,
                Err(error) if error.error == "stale element reference" => {}
                Err(error) => panic!("clicking {css}: {error:?}"),
            }
            assert!(Instant::now() < deadline, "{css} kept going stale");
        }
    }

    /// Types `text` into the element matching `css`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.wait_for(css, Duration::from_secs(10)).await;
        let path = format!("/element/{}/value", element.0);
        self.command(reqwest::Method::POST, &path, Some(json!({ "text": text })))
            .await
            .unwrap_or_else(|error| panic!("typing into {css}: {error:?}"));
    }

    /// Waits for an alert or confirm dialog; its text, and answers it (OK or Cancel).
    pub async fn answer_dialog(&self, accept: bool, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let text = loop {
            match self
                .command(reqwest::Method::GET, "/alert/text", None)
                .await
            {
                Ok(text) => break text.as_str().unwrap_or_default().to_owned(),
                Err(error) if error.error == "no such alert" => {}
                Err(error) => panic!("reading the dialog: {error:?}"),
            }
            assert!(Instant::now() < deadline, "no dialog within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let path = if accept {
            "/alert/accept"
        } else {
            "/alert/dismiss"
        };
        self.command(reqwest::Method::POST, path, Some(json!({})))
            .await
            .unwrap();
        text
    }

    /// The console lines of the page so far (errors such as a refused script among them).
    pub async fn console(&self) -> Vec<String> {
        let logs = self
            .command(
                reqwest::Method::POST,
                "/se/log",
                Some(json!({ "type": "browser" })),
            )
            .await
            .unwrap();
        logs.as_array()
            .unwrap()
            .iter()
            .map(|entry| {
                format!(
                    "{} {}",
                    entry["level"].as_str().unwrap_or_default(),
                    entry["message"].as_str().unwrap_or_default()
                )
            })
            .collect()
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        let encoded = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await
            .unwrap();
        base64_decode(encoded.as_str().unwrap())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Drop cannot await, and a runtime cannot start inside the test's own: a thread
            // of its own ends the session, so that chromedriver closes the browser it started
            // (killing chromedriver would leave the browser running). With a client of its
            // own: a pooled connection of the test's client is driven by the test's runtime,
            // which waits here.
            let session = self.session.clone();
            let ending = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let http = reqwest::Client::builder().no_proxy().build().unwrap();
                    let quit = http.delete(&session).send();
                    let _ = tokio::time::timeout(Duration::from_secs(20), quit).await;
                });
            });
            let _ = ending.join();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (with padding) to bytes; WebDriver sends screenshots so.
fn base64_decode(text: &str) -> Vec<u8> {
    fn sextet(c: u8) -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c:?}"),
        }
    }
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut bytes = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &c)| acc | sextet(c) << (18 - 6 * i));
        let whole = chunk.len() * 6 / 8;
        bytes.extend_from_slice(&bits.to_be_bytes()[1..=whole]);
    }
    bytes
}

/// The lines chromedriver wrote, kept for error messages.
type DriverLogs = Arc<Mutex<Vec<String>>>;

/// Starts `chromedriver` on a port of its choosing; gives back the process, its log lines and
/// the port, or its log lines when it did not say its port within 20 s.
fn start_driver() -> Result<(Child, DriverLogs, u16), String> {
    let mut driver = Command::new("chromedriver")
        .args(["--port=0", "--log-level=WARNING"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromedriver starts (scripts/test installs chromium and chromium-driver)");
    let driver_logs = DriverLogs::default();
    let (port_sender, port_receiver) = std::sync::mpsc::channel();
    let stdout = driver.stdout.take().unwrap();
    let stderr = driver.stderr.take().unwrap();
    for stream in [
        Box::new(stdout) as Box<dyn std::io::Read + Send>,
        Box::new(stderr),
    ] {
        let logs = driver_logs.clone();
        let port_sender = port_sender.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                // "ChromeDriver was started successfully on port 36827."
                if let Some(rest) = line.split("successfully on port ").nth(1) {
                    let port = rest.trim_end_matches('.').trim().parse::<u16>();
                    let _ = port_sender.send(port.unwrap());
                }
                logs.lock().unwrap().push(line);
            }
            // The stream ended: the driver exited (or closed it), so stop waiting for a port.
            drop(port_sender);
        });
    }
    drop(port_sender);
    match port_receiver.recv_timeout(Duration::from_secs(20)) {
        Ok(port) => Ok((driver, driver_logs, port)),
        Err(_) => {
            let _ = driver.kill();
            let _ = driver.wait();
            let logs = driver_logs.lock().unwrap().join("\n");
            Err(logs)
        }
    }
}
