//! TODO(foundation): shm
