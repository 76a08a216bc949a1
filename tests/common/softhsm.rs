//! SoftHSM2 for the PKCS#11 tests: each test gets its own `SOFTHSM2_CONF` and token directory in
//! a temp dir, a token initialised with `softhsm2-util`, and writes keys with `pkcs11-tool`
//! (OpenSC) or `cachet keys import`. `tests/run` installs softhsm2 and opensc.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The SoftHSM2 PKCS#11 module (Debian puts it in one of these).
pub fn softhsm_module() -> PathBuf {
    [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("SoftHSM2 is not installed: tests/run installs it (apt-get install softhsm2 opensc)")
}

pub const USER_PIN: &str = "5678";
const SO_PIN: &str = "12345678";

pub struct SoftHsm {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub tokens: PathBuf,
    pub module: PathBuf,
    pub label: String,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl SoftHsm {
    /// A fresh token labelled `label` with [`USER_PIN`].
    pub fn new(label: &str) -> SoftHsm {
        let dir = tempfile::Builder::new()
            .prefix("softhsm-")
            .tempdir()
            .unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let hsm = SoftHsm {
            dir,
            conf,
            tokens,
            module: softhsm_module(),
            label: label.to_string(),
        };
        run(hsm.util().args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            SO_PIN,
            "--pin",
            USER_PIN,
        ]));
        hsm
    }

    /// Delete the token and create a new, empty one with the same label and PINs (a token
    /// restored from scratch, or replaced).
    pub fn reinit(&self) {
        for e in std::fs::read_dir(&self.tokens).unwrap() {
            std::fs::remove_dir_all(e.unwrap().path()).unwrap();
        }
        run(self.util().args([
            "--init-token",
            "--free",
            "--label",
            &self.label,
            "--so-pin",
            SO_PIN,
            "--pin",
            USER_PIN,
        ]));
    }

    pub fn util(&self) -> Command {
        let mut c = Command::new("softhsm2-util");
        c.env("SOFTHSM2_CONF", &self.conf);
        c
    }

    /// `pkcs11-tool --module <softhsm> --token-label <label> --login --pin <pin>`.
    pub fn tool(&self) -> Command {
        let mut c = Command::new("pkcs11-tool");
        c.env("SOFTHSM2_CONF", &self.conf)
            .arg("--module")
            .arg(&self.module)
            .args(["--token-label", &self.label, "--login", "--pin", USER_PIN]);
        c
    }

    /// Write a private key (PEM, any form openssl reads) onto the token with `pkcs11-tool`.
    pub fn write_key(&self, key_pem: &str, id_hex: &str, label: &str) {
        let pem = self.dir.path().join(format!("{id_hex}.pem"));
        let der = self.dir.path().join(format!("{id_hex}.der"));
        std::fs::write(&pem, key_pem).unwrap();
        run(Command::new("openssl")
            .args(["pkey", "-outform", "DER", "-in"])
            .arg(&pem)
            .arg("-out")
            .arg(&der));
        run(self.tool().arg("--write-object").arg(&der).args([
            "--type",
            "privkey",
            "--usage-sign",
            "--id",
            id_hex,
            "--label",
            label,
        ]));
        std::fs::remove_file(pem).unwrap();
        std::fs::remove_file(der).unwrap();
    }

    /// A PIN file (mode 0600) with `pin`; returns its path.
    pub fn pin_file(&self, pin: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.dir.path().join(format!("pin-{pin}"));
        std::fs::write(&p, format!("{pin}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    /// The `[keys.pkcs11]` table for a config.
    pub fn keys_toml(&self, pin_file: &Path) -> String {
        format!(
            "[keys.pkcs11]\nmodule = {}\ntoken = {}\npin_file = {}\n",
            super::toml_str(&self.module.display().to_string()),
            super::toml_str(&self.label),
            super::toml_str(&pin_file.display().to_string())
        )
    }

    /// Take the token away (its directory moves out of the token dir), as if it were unplugged.
    pub fn unplug(&self) {
        let away = self.dir.path().join("unplugged");
        std::fs::create_dir_all(&away).unwrap();
        for e in std::fs::read_dir(&self.tokens).unwrap() {
            let e = e.unwrap();
            std::fs::rename(e.path(), away.join(e.file_name())).unwrap();
        }
    }

    /// Put an unplugged token back.
    pub fn plug_in(&self) {
        let away = self.dir.path().join("unplugged");
        for e in std::fs::read_dir(&away).unwrap() {
            let e = e.unwrap();
            std::fs::rename(e.path(), self.tokens.join(e.file_name())).unwrap();
        }
    }
}
