// Per-subject erasure: what the rest of pgkm asks about erased keys (pgkm.erase_subject).
#pragma once

#include "pgkm/pg/postgres.hpp"

namespace pgkm::pg
{

// Returns "at <time> by <role>" (palloc'd in the caller's memory context) when the key with
// this id was erased, or nullptr when it was not, or when the catalog predates pgkm 1.4. Reads
// the latest committed catalog in a catalog session of its own (nested sessions are fine):
// for error paths and administration only, never per row.
char *KeyErasure(int64 key_id);

// Raises object_not_in_prerequisite_state (55000) when the key with this id was erased:
// "key "<name>" was erased and cannot be <what>", with a DETAIL saying when and by whom.
// Returns when it was not erased.
void RefuseIfErased(int64 key_id, const char *key_name, const char *what);

} // namespace pgkm::pg
