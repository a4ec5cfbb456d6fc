// The master-key provider interface: the root of trust that wraps and unwraps DEKs
// without ever exposing the master key.
#pragma once

#include "pgkm/core/format.hpp"
#include "pgkm/core/pure.hpp"
#include "pgkm/core/secure_buffer.hpp"

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace pgkm::provider
{

using core::ByteView;

// What the provider reports about one master key (never its value).
struct MasterKeyInfo
{
	std::string label;
	std::size_t key_bits = 0;
	bool token = false;       // CKA_TOKEN: persistent
	bool sensitive = false;   // CKA_SENSITIVE
	bool extractable = false; // CKA_EXTRACTABLE
	bool can_wrap = false;    // CKA_WRAP
	bool can_unwrap = false;  // CKA_UNWRAP
	bool can_sign = false;    // CKA_SIGN
	bool can_verify = false;  // CKA_VERIFY
};

inline constexpr std::size_t kMacSize = 32; // HMAC-SHA-256

class Provider
{
  public:
	virtual ~Provider() = default;

	// Name of the wrapping mechanism recorded with each wrapped DEK ("CKM_AES_KEY_WRAP").
	virtual std::string Mechanism() const = 0;

	// Returns the label "<base>.vN" with the highest N present, or nullopt if none.
	virtual std::optional<std::string> FindNewestMasterKey(const std::string &base_label) = 0;

	// Creates a new AES-256 master key with this label: persistent, private, sensitive,
	// non-extractable, wrap/unwrap only. Throws Error(InvalidArgument) if the label exists.
	virtual void Generate(const std::string &label) = 0;

	// Wraps a 32-byte DEK under the master key; returns the wrapped blob (40 bytes for
	// RFC 3394). Throws Error(UnknownKey) if the label is not in the token.
	virtual std::vector<std::uint8_t> Wrap(const std::string &master_label, ByteView dek) = 0;

	// Unwraps a blob made by Wrap. Throws Error(WrongMasterKey) when the blob fails the
	// mechanism's integrity check (wrong master key, foreign or altered blob).
	virtual core::SecureBuffer Unwrap(const std::string &master_label, ByteView wrapped) = 0;

	// Describes a master key's or a MAC key's attributes. Throws Error(UnknownKey) if absent.
	virtual MasterKeyInfo Describe(const std::string &master_label) = 0;

	// Deletes a master key from the token for good (C_DestroyObject): every blob it wrapped,
	// wherever a copy survives (backups, WAL), can then never be unwrapped again. Throws
	// Error(UnknownKey) if no secret key has this label, Error(TokenUnavailable) with the
	// CKR_* name if the token refuses (CKR_ACTION_PROHIBITED for a key not destroyable).
	virtual void Destroy(const std::string &master_label) = 0;

	// Finds the secret key used for audit checkpoints, or creates it inside the token:
	// CKK_GENERIC_SECRET, 256 bits (CKM_GENERIC_SECRET_KEY_GEN with CKA_VALUE_LEN 32),
	// CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, CKA_EXTRACTABLE false, CKA_SIGN and CKA_VERIFY
	// true, every other usage (encrypt, decrypt, wrap, unwrap, derive) false.
	// Returns true when it created the key. Must be safe when two calls race in one process.
	// Throws Error(InvalidArgument) for an empty label and Error(KeyNotUsable) when the label
	// names a secret key that is not an HMAC key (a master key, say).
	virtual bool EnsureMacKey(const std::string &label) = 0;

	// HMAC-SHA-256 (CKM_SHA256_HMAC via C_SignInit/C_Sign) of data; throws Error(UnknownKey) if
	// no key has this label, Error(KeyNotUsable) if the key may not sign.
	virtual std::array<std::uint8_t, kMacSize> Mac(const std::string &label, ByteView data) = 0;

	// C_VerifyInit/C_Verify with CKM_SHA256_HMAC: true if mac is right, false on
	// CKR_SIGNATURE_INVALID or CKR_SIGNATURE_LEN_RANGE (a mac of the wrong length); throws
	// Error(UnknownKey) if absent, Error(KeyNotUsable) if the key may not verify, and
	// Error(TokenUnavailable) for other failures.
	virtual bool VerifyMac(const std::string &label, ByteView data, ByteView mac) = 0;
};

// Where the PKCS#11 module, token and PIN are.
struct Pkcs11Config
{
	std::string module_path; // loaded with dlopen
	std::string token_label; // the token is found by label, never by slot id
	std::string pin_file;    // owned by the process user, mode 0600 or stricter
};

// The real provider. Nothing is loaded or opened until the first call that needs the
// token; construction never fails. Failures throw Error(TokenUnavailable) (module, slot,
// session, login: the CKR_* name is in the detail) or Error(Configuration) (PIN file).
std::unique_ptr<Provider> MakePkcs11Provider(const Pkcs11Config &config);

// A provider with master keys held in process memory, for unit tests only.
std::unique_ptr<Provider> MakeMemoryProvider();

// Which version of the PIN file was read: it changes when the file is written or replaced.
struct PinFileVersion
{
	unsigned long long device = 0;
	unsigned long long inode = 0;
	long long size = 0;
	long long mtime_ns = 0;
	long long ctime_ns = 0;

	bool operator==(const PinFileVersion &) const = default;
};

// Reads the PIN from a file that must be a regular file owned by the effective user,
// with no group or other permission bits. Strips one trailing newline (and CR).
// Throws Error(Configuration) naming the file (never its content). Fills version, if given,
// with the version of the file it read.
core::SecureBuffer ReadPinFile(const std::string &path, PinFileVersion *version = nullptr);

// Name of a PKCS#11 return value ("CKR_PIN_INCORRECT"), or "CKR_0x..." when unknown.
std::string CkrName(unsigned long rv);

} // namespace pgkm::provider
