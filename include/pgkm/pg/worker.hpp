// The background workers: a launcher that starts one worker per database at server start,
// and the per-database worker that flushes counters, applies rotation policies and runs
// re-encryption jobs in short transactions.
#pragma once

#include "pgkm/pg/postgres.hpp"

namespace pgkm::pg
{

// Registers the launcher; called from _PG_init under shared_preload_libraries.
void WorkerInit();

// Starts the worker of the current database unless one runs; returns whether it started one.
bool StartDatabaseWorker();

// Sets the latch of the current database's worker, so it looks for work at once.
void WakeDatabaseWorker();

// A worker step: a transaction with SPI connected, a snapshot and search_path pinned.
void WorkerBeginStep();
// Commits the step's transaction.
void WorkerEndStep();
// Sets a setting for the current transaction only.
void WorkerSetLocal(const char *name, const char *value);

} // namespace pgkm::pg
