// Redaction of bind parameters from the server log: statements that use pgkm's data path
// carry plaintext in their parameters, which PostgreSQL logs with log_statement,
// log_min_duration_statement and log_parameter_max_length_on_error.
#pragma once

namespace pgkm::pg
{

// Installs the log, parse-analysis and planner hooks; called from _PG_init under
// shared_preload_libraries.
void RedactInit();

// Notes that the statement running now uses the data path (so its parameters are
// redacted from now on); cheap after the first call of a statement.
void RedactNoteDataPathUse();

} // namespace pgkm::pg
