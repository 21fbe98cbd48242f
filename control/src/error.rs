//! Problems with objects, each naming the file, the document and the field.

use std::fmt;

/// One problem in one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file (or another description of the source).
    pub file: String,
    /// 1-based document number in the file (`---` separated); 0 when the
    /// problem is not about one document.
    pub document: usize,
    /// Field path, e.g. `spec.ports[0].targetPort`; empty for the document.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// What kind of problem it is.
    pub kind: ProblemKind,
}

/// Most problems make an object invalid; Kubernetes mode treats some
/// references differently (Gateway API status reasons).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProblemKind {
    /// The object is invalid.
    #[default]
    Invalid,
    /// A reference to a service that does not exist.
    MissingService,
    /// A reference to a kind weft does not support (a Gateway).
    UnsupportedKind,
    /// A route claims a match another route on the same parent also
    /// claims (precedence decides which takes it).
    Conflict,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.document > 0 {
            write!(f, " document {}", self.document)?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A set of objects that cannot be applied: every problem found. Nothing of
/// such a set is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Rejected {
    /// At least one problem.
    pub problems: Vec<Problem>,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "rejected, nothing applied: {n} problem{}",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl Rejected {
    /// Fails with `problems` unless there are none.
    pub fn check(problems: Vec<Problem>) -> Result<(), Rejected> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Rejected { problems })
        }
    }
}
