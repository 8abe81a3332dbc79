//! `check-config`: validates a config file and prints the effective settings as an operator
//! writes them, each with where its value came from (default or file:line).

use std::path::PathBuf;

use smtp_xdp::daemon::{self, RunOptions};

use super::print_json;

pub fn check(config: Option<PathBuf>, json: bool) -> anyhow::Result<i32> {
    let opts = RunOptions {
        config,
        ..RunOptions::default()
    };
    let r = daemon::resolve_settings(&opts)?;
    let source = r
        .config
        .as_ref()
        .map_or("built-in defaults".to_string(), |p| p.display().to_string());
    if json {
        let mut settings = serde_json::Map::new();
        for key in smtp_xdp::config::ALL_KEYS {
            let origin = r
                .origins
                .iter()
                .rev()
                .find(|(k, _)| k == key || (*key == "ban-time" && k == "ban"))
                .map_or(smtp_xdp::config::Origin::Default, |(_, o)| o.clone());
            settings.insert(
                key.to_string(),
                serde_json::json!({
                    "value": r.settings.value(key).map(|v| serde_json::to_value(v).unwrap_or_default()),
                    "origin": origin,
                }),
            );
        }
        return print_json(&serde_json::json!({
            "config": source,
            "valid": true,
            "settings": settings,
        }));
    }
    println!("# {source}: valid. The effective settings, and where each comes from:");
    print!("{}", r.settings.to_toml(&r.origins));
    Ok(0)
}
