// The worker's side of the audit log: appending what the ring holds, sealing and retention.
#pragma once

namespace pgkm::pg
{

// Appends this database's ring entries to pgkm.audit_log, a batch per transaction, until
// the ring holds none (or a bound is reached). Returns how many it took, -1 after a failure.
int AuditDrain();

// Seals the chain when a checkpoint is due (pgkm.audit_checkpoint_interval or
// pgkm.audit_checkpoint_records), and with retention applies pgkm.audit_retention.
void AuditHousekeeping(bool retention);

// Whether a second has passed since the last call that said yes: bounds how often the
// worker looks for a due checkpoint while records stream in.
bool AuditCheckpointDue();

} // namespace pgkm::pg
