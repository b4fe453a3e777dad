//! A callback script that records each call, one file per node.

use std::path::PathBuf;

/// The script and the directory its records go to (removed on drop).
pub(crate) struct RecordedCallbacks {
    dir: tempfile::TempDir,
    script: PathBuf,
}

impl RecordedCallbacks {
    /// A script that appends its arguments to `calls-$MATRIARCH_TEST_NODE`
    /// (see `Cluster::start_each_named`).
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("callback.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$@\" >> {}/calls-$MATRIARCH_TEST_NODE\n",
                dir.path().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        RecordedCallbacks { dir, script }
    }

    /// The `callbacks:` section that runs the script for each of `events`.
    pub(crate) fn yaml(&self, events: &[&str]) -> String {
        let mut yaml = "callbacks:\n".to_owned();
        for event in events {
            yaml += &format!("  {event}: {}\n", self.script.display());
        }
        yaml
    }

    /// The calls node `name` got so far, one `<action> <role> <scope>` each.
    pub(crate) fn calls(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join(format!("calls-{name}")))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}
