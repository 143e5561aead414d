//! TODO(foundation): proto
