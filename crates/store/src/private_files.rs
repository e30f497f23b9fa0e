//! The embedded database holds every tenant's messages and contacts: its files are readable by
//! the owner only (0600), and folders made for them are 0700. Files and folders from older
//! releases, created with the umask's 0644/0755, are tightened when the store opens them.

use std::path::{Path, PathBuf};

use waypost_core::{Error, ErrorCode, Result};

const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

fn io_error(what: &str, path: &Path, err: std::io::Error) -> Error {
    Error::with_source(
        ErrorCode::InvalidConfig,
        format!("cannot {what} {}", path.display()),
        err,
    )
}

/// Creates `dir` (and missing parents) as 0700; an existing folder is left as it is.
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder
        .create(dir)
        .map_err(|e| io_error("create the folder", dir, e))
}

/// Creates `dir` as 0700, or takes group and other permissions away from an existing one.
pub fn private_dir(dir: &Path) -> Result<()> {
    create_dir(dir)?;
    restrict(dir, DIR_MODE)
}

/// The database file and its WAL companions.
fn database_files(db: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [db.to_path_buf(), with("-wal"), with("-shm")]
}

/// Creates the database file as 0600 before SQLite does (SQLite would use 0644, and gives the
/// -wal and -shm files it creates later the database file's mode), and tightens existing ones.
pub(crate) fn prepare_database(db: &Path) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    options
        .open(db)
        .map_err(|e| io_error("create the database file", db, e))?;
    tighten_database(db)
}

/// Takes group and other permissions away from the database, -wal and -shm files that exist.
pub(crate) fn tighten_database(db: &Path) -> Result<()> {
    for file in database_files(db).iter().filter(|f| f.exists()) {
        private_file(file)?;
    }
    Ok(())
}

/// Takes group and other permissions away from an existing file.
pub fn private_file(path: &Path) -> Result<()> {
    restrict(path, FILE_MODE)
}

#[cfg(unix)]
fn restrict(path: &Path, allowed: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| io_error("read the permissions of", path, e))?
        .permissions()
        .mode();
    if mode & 0o777 & !allowed == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & allowed))
        .map_err(|e| io_error("restrict the permissions of", path, e))
}

#[cfg(not(unix))]
fn restrict(_path: &Path, _allowed: u32) -> Result<()> {
    Ok(())
}
