//! prerank (work in progress)
