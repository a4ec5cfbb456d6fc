// The backend's connection to the master-key provider, configured from the GUCs.
// Every function here throws core::Error: call them only inside PGKM_CORE.
#pragma once

#include "pgkm/core/format.hpp"
#include "pgkm/core/key_material.hpp"
#include "pgkm/provider/provider.hpp"

#include <cstddef>
#include <cstdint>

// Runs a statement that calls the token, like PGKM_CORE, holding TokenLock() meanwhile.
// The lock is released before any error is raised.
#define PGKM_TOKEN_CALL(...)                                                                       \
	do                                                                                             \
	{                                                                                              \
		::pgkm::pg::Failure pgkm_failure_;                                                         \
		LWLockAcquire(::pgkm::pg::TokenLock(), LW_EXCLUSIVE);                                      \
		bool pgkm_ok_ = ::pgkm::pg::RunCore(pgkm_failure_, [&]() { __VA_ARGS__; });                \
		LWLockRelease(::pgkm::pg::TokenLock());                                                    \
		if (!pgkm_ok_)                                                                             \
			::pgkm::pg::ReportFailure(pgkm_failure_);                                              \
	} while (0)

namespace pgkm::pg
{

inline constexpr std::size_t kMaxLabel = 128;
inline constexpr std::size_t kMaxWrapped = 64;

// The result of choosing a master key for new DEKs.
struct MasterKeyChoice
{
	char label[kMaxLabel];
	bool generated; // pgkm created it now, rather than finding it in the token
};

// A freshly generated DEK in wrapped form, with its key check value.
struct WrappedDek
{
	unsigned char wrapped[kMaxWrapped];
	std::size_t wrapped_len;
	unsigned char check[core::kCheckValueSize];
	char mechanism[32];
};

// Returns the provider, connecting it lazily and reconnecting if the settings changed.
provider::Provider &Token();

// Closes the token session and unloads the module; safe to call at any time.
void TokenShutdown() noexcept;

// Finds the newest "<base>.vN" master key in the token, or generates "<base>.v1".
void FindOrGenerateMasterKey(const char *base_label, MasterKeyChoice *out);

// Checks that a master key with this label exists in the token.
void RequireMasterKey(const char *label);

// Chooses the master key that follows the catalog's newest "<base>.vN" (N = catalog_version,
// 0 if none): adopts the token's newest "<base>.vM" if M > N (one the HSM's officers made,
// or one left by a rotation that rolled back) after checking that it is a non-extractable
// wrapping key, or else generates "<base>.v<N+1>".
void NextMasterKey(const char *base_label, std::uint64_t catalog_version, MasterKeyChoice *out);

// Deletes a master key from the token for good. Returns false, deleting nothing, when the
// token holds no key with this label (the HSM's officers deleted it already, say).
bool DestroyMasterKey(const char *label);

// Returns N when label is "<base>.vN", or 0.
std::uint64_t MasterKeyLabelVersion(const char *base_label, const char *label);

// Makes a random 32-byte DEK for (key_id, version), wraps it under the master key and
// computes its key check value. The DEK itself is wiped before returning.
void NewWrappedDek(const char *master_label, std::uint32_t key_id, std::uint32_t version,
				   WrappedDek *out);

// Unwraps a stored DEK, verifies its key check value against (key_id, version) and
// returns the derived key material (owned by the caller; free with DestroyKeyMaterial).
core::KeyMaterial *UnwrapKeyMaterial(const char *master_label, const char *key_name,
									 std::uint32_t key_id, std::uint32_t version,
									 core::Algorithm algorithm, core::ByteView wrapped,
									 core::ByteView check);

// Re-wraps the stored DEK of (key_id, version) from master key old_label to new_label:
// unwraps it, verifies its key check value, wraps it under the new master key and checks
// that the new blob unwraps to the same DEK. out->check is the stored check value (it
// depends on the DEK and its identity only, not on the master key). The DEK is wiped.
void RewrapDek(const char *old_label, const char *new_label, const char *key_name,
			   std::uint32_t key_id, std::uint32_t version, core::ByteView wrapped,
			   core::ByteView check, WrappedDek *out);

// MACs an audit checkpoint message with the token's HMAC key (CKM_SHA256_HMAC), creating
// the key first if the token has none with this label. Returns whether it was created.
bool AuditMac(const char *label, core::ByteView message, std::uint8_t out[32]);

// Verifies an audit checkpoint MAC through the token; false when it does not match.
// Throws Error(UnknownKey) when the token holds no key with this label.
bool AuditVerifyMac(const char *label, core::ByteView message, core::ByteView mac);

// Frees key material; its keys are wiped by their secure buffers.
void DestroyKeyMaterial(core::KeyMaterial *material) noexcept;

// Checks the PIN file's ownership and mode without contacting the token.
void CheckPinFile(const char *path);

} // namespace pgkm::pg
