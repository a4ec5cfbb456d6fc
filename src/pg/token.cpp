// The backend's connection to the master-key provider: created lazily after fork from the
// pgkm.pkcs11_* settings, rebuilt when they change, closed when the backend exits.
#include "pgkm/pg/token.hpp"

#include "pgkm/core/error.hpp"
#include "pgkm/core/secure_buffer.hpp"
#include "pgkm/provider/master_label.hpp"

#include <openssl/crypto.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "pgkm/pg/guc.hpp"

namespace pgkm::pg
{

namespace
{

std::unique_ptr<provider::Provider> token;
provider::Pkcs11Config token_config;

// Returns a setting's value, or throws a configuration error naming it.
std::string RequiredSetting(const char *name, const char *value)
{
	if (value == nullptr || value[0] == '\0')
		throw core::Error(core::ErrorKind::Configuration, std::string(name) + " is not set", {},
						  "Set pgkm.pkcs11_module, pgkm.pkcs11_token_label and "
						  "pgkm.pkcs11_pin_file in postgresql.conf.");
	return value;
}

// Runs a provider call on a master key that the catalog records. The token not holding that
// key is a fault of the token, like its absence (58000), not an unknown name the caller gave:
// Error(UnknownKey) becomes Error(TokenUnavailable), with the provider's detail and hint.
template <typename Call> auto OnRecordedMasterKey(Call &&call) -> decltype(call())
{
	try
	{
		return call();
	}
	catch (const core::Error &error)
	{
		if (error.kind() != core::ErrorKind::UnknownKey)
			throw;
		throw core::Error(core::ErrorKind::TokenUnavailable, error.message(), error.detail(),
						  error.hint());
	}
}

// Copies a string into a fixed buffer, refusing to truncate.
void CopyLabel(char *dst, std::size_t size, const std::string &src)
{
	if (src.size() >= size)
		throw core::Error(core::ErrorKind::InvalidArgument, "master key label is too long");
	std::snprintf(dst, size, "%s", src.c_str());
}

} // namespace

provider::Provider &Token()
{
	provider::Pkcs11Config wanted;
	wanted.module_path = RequiredSetting("pgkm.pkcs11_module", guc_pkcs11_module);
	wanted.token_label = RequiredSetting("pgkm.pkcs11_token_label", guc_pkcs11_token_label);
	wanted.pin_file = RequiredSetting("pgkm.pkcs11_pin_file", guc_pkcs11_pin_file);
	if (token && (wanted.module_path != token_config.module_path ||
				  wanted.token_label != token_config.token_label ||
				  wanted.pin_file != token_config.pin_file))
		token.reset();
	if (!token)
	{
		token = provider::MakePkcs11Provider(wanted);
		token_config = wanted;
	}
	return *token;
}

void TokenShutdown() noexcept
{
	token.reset();
}

void FindOrGenerateMasterKey(const char *base_label, MasterKeyChoice *out)
{
	provider::Provider &p = Token();
	auto newest = p.FindNewestMasterKey(base_label);
	if (newest)
	{
		CopyLabel(out->label, sizeof(out->label), *newest);
		out->generated = false;
		return;
	}
	std::string label = std::string(base_label) + ".v1";
	p.Generate(label);
	CopyLabel(out->label, sizeof(out->label), label);
	out->generated = true;
}

bool AuditMac(const char *label, core::ByteView message, std::uint8_t out[32])
{
	bool created = Token().EnsureMacKey(label);
	auto mac = Token().Mac(label, message);
	memcpy(out, mac.data(), mac.size());
	return created;
}

bool AuditVerifyMac(const char *label, core::ByteView message, core::ByteView mac)
{
	return Token().VerifyMac(label, message, mac);
}

void RequireMasterKey(const char *label)
{
	OnRecordedMasterKey([&] { return Token().Describe(label); });
}

void NextMasterKey(const char *base_label, std::uint64_t catalog_version, MasterKeyChoice *out)
{
	provider::Provider &p = Token();
	auto newest = p.FindNewestMasterKey(base_label);
	std::uint64_t token_version = newest ? *provider::MasterKeyVersion(base_label, *newest) : 0;
	if (token_version > catalog_version)
	{
		provider::MasterKeyInfo info = p.Describe(*newest);
		if (info.extractable || !info.can_wrap || !info.can_unwrap)
			throw core::Error(core::ErrorKind::KeyNotUsable,
							  "master key \"" + *newest + "\" in the PKCS#11 token cannot be used",
							  "A master key must be non-extractable and allowed to wrap and unwrap "
							  "(CKA_EXTRACTABLE false, CKA_WRAP and CKA_UNWRAP true).");
		CopyLabel(out->label, sizeof(out->label), *newest);
		out->generated = false;
		return;
	}
	if (catalog_version == UINT64_MAX)
		throw core::Error(core::ErrorKind::InvalidArgument, "no master key versions are left");
	std::string label = std::string(base_label) + ".v" + std::to_string(catalog_version + 1);
	CopyLabel(out->label, sizeof(out->label), label);
	p.Generate(label);
	out->generated = true;
}

bool DestroyMasterKey(const char *label)
{
	try
	{
		Token().Destroy(label);
		return true;
	}
	catch (const core::Error &error)
	{
		if (error.kind() != core::ErrorKind::UnknownKey)
			throw;
		return false;
	}
}

std::uint64_t MasterKeyLabelVersion(const char *base_label, const char *label)
{
	return provider::MasterKeyVersion(base_label, label).value_or(0);
}

void NewWrappedDek(const char *master_label, std::uint32_t key_id, std::uint32_t version,
				   WrappedDek *out)
{
	provider::Provider &p = Token();
	core::SecureBuffer dek = core::SecureBuffer::Random(core::kDekSize);
	std::vector<std::uint8_t> wrapped =
		OnRecordedMasterKey([&] { return p.Wrap(master_label, dek.view()); });
	if (wrapped.size() > sizeof(out->wrapped))
		throw core::Error(core::ErrorKind::Internal, "wrapped key is longer than expected");
	std::copy(wrapped.begin(), wrapped.end(), out->wrapped);
	out->wrapped_len = wrapped.size();
	auto check = core::KeyCheckValue(dek.view(), key_id, version);
	std::copy(check.begin(), check.end(), out->check);
	std::snprintf(out->mechanism, sizeof(out->mechanism), "%s", p.Mechanism().c_str());
}

namespace
{

// Unwraps a stored DEK and verifies its key check value against (key_id, version).
core::SecureBuffer UnwrapVerified(const char *master_label, const char *key_name,
								  std::uint32_t key_id, std::uint32_t version,
								  core::ByteView wrapped, core::ByteView check)
{
	core::SecureBuffer dek;
	try
	{
		dek = OnRecordedMasterKey([&] { return Token().Unwrap(master_label, wrapped); });
	}
	catch (const core::Error &error)
	{
		if (error.kind() != core::ErrorKind::WrongMasterKey)
			throw;
		char message[256];
		std::snprintf(
			message, sizeof(message),
			"wrapped key of key \"%s\" version %u does not unwrap under master key \"%s\"",
			key_name, version, master_label);
		throw core::Error(core::ErrorKind::WrongMasterKey, message, error.detail(),
						  "The token holds a different master key under this label, or the "
						  "wrapped key was altered.");
	}
	if (!core::VerifyKeyCheckValue(dek.view(), key_id, version, check))
	{
		char message[256];
		std::snprintf(message, sizeof(message),
					  "wrapped key of key \"%s\" version %u does not match its key check value",
					  key_name, version);
		throw core::Error(core::ErrorKind::WrongMasterKey, message,
						  "The wrapped key belongs to another key version or another database, "
						  "or master key \"" +
							  std::string(master_label) + "\" is not the one that wrapped it.");
	}
	return dek;
}

} // namespace

core::KeyMaterial *UnwrapKeyMaterial(const char *master_label, const char *key_name,
									 std::uint32_t key_id, std::uint32_t version,
									 core::Algorithm algorithm, core::ByteView wrapped,
									 core::ByteView check)
{
	core::SecureBuffer dek =
		UnwrapVerified(master_label, key_name, key_id, version, wrapped, check);
	return new core::KeyMaterial(key_id, version, algorithm, dek.view());
}

void RewrapDek(const char *old_label, const char *new_label, const char *key_name,
			   std::uint32_t key_id, std::uint32_t version, core::ByteView wrapped,
			   core::ByteView check, WrappedDek *out)
{
	if (check.size() != sizeof(out->check))
		throw core::Error(core::ErrorKind::WrongMasterKey,
						  "key check value of key \"" + std::string(key_name) + "\" version " +
							  std::to_string(version) + " has the wrong length");
	provider::Provider &p = Token();
	core::SecureBuffer dek = UnwrapVerified(old_label, key_name, key_id, version, wrapped, check);
	std::vector<std::uint8_t> rewrapped =
		OnRecordedMasterKey([&] { return p.Wrap(new_label, dek.view()); });
	if (rewrapped.size() > sizeof(out->wrapped))
		throw core::Error(core::ErrorKind::Internal, "wrapped key is longer than expected");
	// The old blob is overwritten in the catalog: prove the new one opens first.
	core::SecureBuffer again = OnRecordedMasterKey([&] { return p.Unwrap(new_label, rewrapped); });
	if (again.size() != dek.size() || CRYPTO_memcmp(again.data(), dek.data(), dek.size()) != 0)
		throw core::Error(core::ErrorKind::Internal, "key \"" + std::string(key_name) +
														 "\" version " + std::to_string(version) +
														 " does not unwrap under master key \"" +
														 new_label + "\" after re-wrapping");
	std::copy(rewrapped.begin(), rewrapped.end(), out->wrapped);
	out->wrapped_len = rewrapped.size();
	std::copy(check.begin(), check.end(), out->check);
	std::snprintf(out->mechanism, sizeof(out->mechanism), "%s", p.Mechanism().c_str());
}

void DestroyKeyMaterial(core::KeyMaterial *material) noexcept
{
	delete material;
}

void CheckPinFile(const char *path)
{
	provider::ReadPinFile(path);
}

} // namespace pgkm::pg
