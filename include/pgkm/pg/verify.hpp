// Integrity verification (pgkm.verify): a throttled, constant-memory scan that tries to decrypt
// every protected value, and the shared slots behind pgkm.verify_progress.
#pragma once

namespace pgkm::pg
{

// Installs the shared-memory hooks of the progress slots; called from _PG_init under
// shared_preload_libraries.
void VerifyInit();

} // namespace pgkm::pg
