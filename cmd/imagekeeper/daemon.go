package main

import "time"

// defaultDrainTimeout is how long a stopping daemon lets in-flight runs finish; the
// unit's TimeoutStopSec must stay above it.
const defaultDrainTimeout = 5 * time.Minute
