//! The page's log: `log` records and panics go to the browser's console
//! (std's stderr goes nowhere in a browser).

use wasm_bindgen::JsValue;

struct Console;

impl log::Log for Console {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info || m.target().starts_with("lamina")
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = JsValue::from_str(&format!("{}: {}", r.target(), r.args()));
        match r.level() {
            log::Level::Error => web_sys::console::error_1(&line),
            log::Level::Warn => web_sys::console::warn_1(&line),
            _ => web_sys::console::log_1(&line),
        }
    }

    fn flush(&self) {}
}

/// Sends log records at info and above (and lamina's at debug) and panic
/// messages to the console.
pub(crate) fn init() {
    if log::set_logger(&Console).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&JsValue::from_str(&format!("lamina panicked: {info}")));
    }));
}
