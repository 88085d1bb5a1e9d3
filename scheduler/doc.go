// Package scheduler makes, waits for, watches, checks and deletes the images
// imagekeeper keeps: it decides when each policy's slots are due, images every
// server a slot selects, records each image's life in the lineage (package
// store), applies retention, reconciles the cloud against the lineage, and runs
// restore drills.
//
// # Components
//
// Each component is one type in a file named for it:
//
//   - Scheduler (scheduler.go) fires each policy's slots on its cron schedule,
//     catches up missed ones within max_lateness, and drains on shutdown. It calls
//     a SlotFunc; RunnerSlots adapts a Runner to it.
//   - Runner (runner.go) is the backup runner. Each RunSlot is a slotRun
//     (slot_run.go): it selects the servers, takes each through the per-server
//     state machine (slot_server.go: the existing row, the skips, the intent, the
//     createImage call, busy retries, unknown outcomes), waits for the images
//     (waiter.go) and records the slot's outcome. interrupted.go resumes what a
//     killed process left; hooks.go runs the pre and post hooks around a call.
//   - Retention (retention.go) prunes a policy by name, by the config in force
//     when it gets the policy's lock. A prune plans (prune_plan.go), then carries
//     the plan out image by image through the deletion journal (prune_journal.go,
//     prune_snapshots.go).
//   - LateWatcher (late_watcher.go) keeps looking at images that failed by
//     wait_timeout until their late window closes, and promotes the ones that
//     complete.
//   - Reconciler (reconciler.go) diffs the cloud's stamped images and snapshots
//     against the lineage and repairs what it can prove ours; Recover
//     (recover.go) rebuilds a lost lineage from the stamps; ForeignStamps
//     (foreign.go) finds images of our policies under another owner.
//   - Driller (driller.go) boots servers from good images on the verify
//     schedules and deletes what it booted.
//   - Metrics (metrics.go, metrics_refresh.go) are fed by all of them.
//
// # Shared resources
//
// One Shared (shared.go) per process holds what the components must share to
// stay apart and within the limits: the cloud behind the request-rate token
// bucket, the worker slots (shared fairly between policies), the per-policy lock
// (a backup run, a prune, a reconcile fix of one policy never overlap; a prune
// yields to a run that waits for it), the per-server lock (never two createImage
// calls on one server), the image rows a wait has claimed (a resumed wait and a
// re-run never both wait for one row), the server inventory of a slot instant,
// and the store, metrics, clock and logger. Every component receives it from
// its constructor (NewRunner, NewRetention, NewReconciler, NewLateWatcher,
// NewDriller); a command run through the daemon's control socket uses the
// daemon's, so that its locks keep the command apart from the daemon's own work.
//
// # The life of an image row
//
// Every image has one lineage row per (policy, server, slot), written before the
// cloud is asked for anything, so that a crash at any point leaves a row that
// says what may exist:
//
//	requested ──createImage answered──▶ creating ──active, snapshots available──▶ good
//	  │  │  ▲                              │
//	  │  │  └─ 409 busy, hook skip:        ├─ killed, 404, snapshot error ─────────▶ failed
//	  │  │     intent dropped, retried     └─ not good within wait_timeout ────────▶ failed (timed out)
//	  │  └─ outcome unknown: found by its stamp (adopted) ──▶ creating
//	  └─ refused, or no stamped image within wait_timeout ────────────────────────▶ failed
//
//	failed (timed out) ──completes within its late window──▶ good (late good)
//	good ──image gone or hollow (reconcile)──▶ failed
//
//	good, failed ──retention deletes──▶ deleting ──image and snapshots gone──▶ deleted
//	                                     │  ▲
//	                                     │  └─ a step not done: retried after a backoff
//	                                     └─ Glance refuses (protected) ──▶ kept_protected
//	kept_protected ──no longer protected (recheck)──▶ good or failed, decided afresh
//
// The store makes each transition with its audit event in one transaction and
// refuses a transition from a state not listed for it. A row's slot records the
// run's outcome: ran, caught_up, empty or failed (running while it runs, and
// after a killed process until the next start resumes it).
//
// # Logs
//
// Every component logs with log/slog under the keys of log.go (LogKeyPolicy,
// LogKeyServerID, ...): one query by key finds every line about a thing.
package scheduler
