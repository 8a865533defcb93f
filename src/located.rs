//! An error at a place in a file, printed `path:line:column: reason` as
//! compilers print them (editors and CI annotations jump to it). One type
//! for the config file, the service definitions and the static zone files.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub path: PathBuf,
    /// 1-based; `None` when the problem is the whole file (unreadable,
    /// conflicting with another).
    pub line: Option<usize>,
    /// 1-based, with a line.
    pub column: Option<usize>,
    pub reason: String,
}

impl Located {
    /// A problem with the whole file.
    pub fn file(path: &Path, reason: impl Into<String>) -> Located {
        Located {
            path: path.to_path_buf(),
            line: None,
            column: None,
            reason: reason.into(),
        }
    }

    /// A problem on one line.
    pub fn line(path: &Path, line: usize, reason: impl Into<String>) -> Located {
        Located {
            line: Some(line),
            ..Located::file(path, reason)
        }
    }

    /// A problem at one column of one line.
    pub fn at(path: &Path, line: usize, column: usize, reason: impl Into<String>) -> Located {
        Located {
            line: Some(line),
            column: Some(column),
            ..Located::file(path, reason)
        }
    }
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for Located {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_as_compilers_print_them() {
        let p = Path::new("zones/web.json");
        assert_eq!(
            Located::file(p, "cannot read").to_string(),
            "zones/web.json: cannot read"
        );
        assert_eq!(
            Located::line(p, 3, "bad").to_string(),
            "zones/web.json:3: bad"
        );
        assert_eq!(
            Located::at(p, 3, 7, "bad").to_string(),
            "zones/web.json:3:7: bad"
        );
    }
}
