// The in-memory master-key provider: RFC 3394 wrapping and HMAC-SHA-256 with OpenSSL, for
// unit tests only.
#include "pgkm/core/error.hpp"
#include "pgkm/provider/master_label.hpp"
#include "pgkm/provider/provider.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <map>
#include <memory>

namespace pgkm::provider
{

namespace
{

using core::Error;
using core::ErrorKind;

constexpr std::size_t kMasterKeySize = 32;
constexpr std::size_t kMacKeySize = 32;
constexpr std::size_t kDekSize = 32;
constexpr std::size_t kWrapOverhead = 8; // RFC 3394 integrity block
constexpr std::size_t kWrappedSize = kDekSize + kWrapOverhead;

// Frees an OpenSSL cipher context when the operation's scope ends.
struct CipherContextFree
{
	void operator()(EVP_CIPHER_CTX *context) const noexcept { EVP_CIPHER_CTX_free(context); }
};
using CipherContext = std::unique_ptr<EVP_CIPHER_CTX, CipherContextFree>;

// Creates a context set up for AES-256 key wrap (RFC 3394) in the given direction.
CipherContext WrapContext(const core::SecureBuffer &key, bool encrypt)
{
	CipherContext context(EVP_CIPHER_CTX_new());
	if (!context)
		throw Error(ErrorKind::Internal, "could not allocate a cipher context");
	EVP_CIPHER_CTX_set_flags(context.get(), EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
	if (EVP_CipherInit_ex(context.get(), EVP_aes_256_wrap(), nullptr, key.data(), nullptr,
						  encrypt ? 1 : 0) != 1)
		throw Error(ErrorKind::Internal, "could not set up AES key wrap");
	return context;
}

// What a key may be used for: a master key wraps and unwraps, a MAC key signs and verifies.
enum class Usage
{
	Wrap,
	Mac,
};

// One key held by the provider.
struct HeldKey
{
	core::SecureBuffer value;
	Usage usage;
};

// Master and MAC keys as random bytes in locked memory, by label (one namespace, as in a
// token). Not thread-safe.
class MemoryProvider final : public Provider
{
  public:
	std::string Mechanism() const override;
	std::optional<std::string> FindNewestMasterKey(const std::string &base_label) override;
	void Generate(const std::string &label) override;
	std::vector<std::uint8_t> Wrap(const std::string &master_label, ByteView dek) override;
	core::SecureBuffer Unwrap(const std::string &master_label, ByteView wrapped) override;
	MasterKeyInfo Describe(const std::string &master_label) override;
	void Destroy(const std::string &master_label) override;
	bool EnsureMacKey(const std::string &label) override;
	std::array<std::uint8_t, kMacSize> Mac(const std::string &label, ByteView data) override;
	bool VerifyMac(const std::string &label, ByteView data, ByteView mac) override;

  private:
	const HeldKey &Find(const std::string &label, const char *what) const;
	const core::SecureBuffer &Key(const std::string &label, Usage usage) const;

	std::map<std::string, HeldKey> keys_;
};

// Names the same mechanism as the PKCS#11 provider: the blobs have the same format.
std::string MemoryProvider::Mechanism() const
{
	return "CKM_AES_KEY_WRAP";
}

// Scans the held labels for the highest "<base>.vN".
std::optional<std::string> MemoryProvider::FindNewestMasterKey(const std::string &base_label)
{
	std::optional<std::string> newest;
	std::uint64_t newest_version = 0;
	for (const auto &entry : keys_)
	{
		const auto version = MasterKeyVersion(base_label, entry.first);
		if (version && *version > newest_version)
		{
			newest_version = *version;
			newest = entry.first;
		}
	}
	return newest;
}

// Draws a fresh random key for a new label.
void MemoryProvider::Generate(const std::string &label)
{
	if (label.empty())
		throw Error(ErrorKind::InvalidArgument, "master key label must not be empty");
	if (keys_.count(label) != 0)
		throw Error(ErrorKind::InvalidArgument, "master key \"" + label + "\" already exists");
	keys_.emplace(label, HeldKey{core::SecureBuffer::Random(kMasterKeySize), Usage::Wrap});
}

// Wraps the DEK with AES-256 key wrap; the result is 40 bytes.
std::vector<std::uint8_t> MemoryProvider::Wrap(const std::string &master_label, ByteView dek)
{
	if (dek.size() != kDekSize)
		throw Error(ErrorKind::InvalidArgument, "a data encryption key must be 32 bytes");
	CipherContext context = WrapContext(Key(master_label, Usage::Wrap), true);
	std::vector<std::uint8_t> wrapped(kWrappedSize);
	int length = 0;
	if (EVP_CipherUpdate(context.get(), wrapped.data(), &length, dek.data(),
						 static_cast<int>(dek.size())) != 1 ||
		static_cast<std::size_t>(length) != kWrappedSize)
		throw Error(ErrorKind::Internal, "AES key wrap failed");
	return wrapped;
}

// Unwraps and checks RFC 3394's integrity block; a failure means a foreign or altered blob.
core::SecureBuffer MemoryProvider::Unwrap(const std::string &master_label, ByteView wrapped)
{
	if (wrapped.size() != kWrappedSize)
		throw Error(ErrorKind::WrongMasterKey, "wrapped key has the wrong length",
					"expected " + std::to_string(kWrappedSize) + " bytes, got " +
						std::to_string(wrapped.size()));
	CipherContext context = WrapContext(Key(master_label, Usage::Wrap), false);
	core::SecureBuffer dek(kDekSize);
	int length = 0;
	if (EVP_CipherUpdate(context.get(), dek.data(), &length, wrapped.data(),
						 static_cast<int>(wrapped.size())) != 1 ||
		static_cast<std::size_t>(length) != kDekSize)
		throw Error(ErrorKind::WrongMasterKey,
					"wrapped key does not unwrap under master key \"" + master_label + "\"",
					"AES key wrap integrity check failed");
	return dek;
}

// Reports fixed attributes: memory keys are neither persistent nor extractable through the API,
// and each is usable only for its own purpose.
MasterKeyInfo MemoryProvider::Describe(const std::string &master_label)
{
	const HeldKey &key = Find(master_label, "master key");
	MasterKeyInfo info;
	info.label = master_label;
	info.key_bits = key.value.size() * 8;
	info.token = false;
	info.sensitive = true;
	info.extractable = false;
	info.can_wrap = key.usage == Usage::Wrap;
	info.can_unwrap = key.usage == Usage::Wrap;
	info.can_sign = key.usage == Usage::Mac;
	info.can_verify = key.usage == Usage::Mac;
	return info;
}

// Forgets the key; its value is wiped by its secure buffer.
void MemoryProvider::Destroy(const std::string &master_label)
{
	(void)Find(master_label, "master key");
	keys_.erase(master_label);
}

// Draws a fresh random MAC key unless one already has this label.
bool MemoryProvider::EnsureMacKey(const std::string &label)
{
	if (label.empty())
		throw Error(ErrorKind::InvalidArgument, "MAC key label must not be empty");
	const auto found = keys_.find(label);
	if (found != keys_.end())
	{
		if (found->second.usage != Usage::Mac)
			throw Error(ErrorKind::KeyNotUsable,
						"secret key \"" + label + "\" is not an HMAC key that may sign and verify");
		return false;
	}
	keys_.emplace(label, HeldKey{core::SecureBuffer::Random(kMacKeySize), Usage::Mac});
	return true;
}

// Computes HMAC-SHA-256 with OpenSSL.
std::array<std::uint8_t, kMacSize> MemoryProvider::Mac(const std::string &label, ByteView data)
{
	const core::SecureBuffer &key = Key(label, Usage::Mac);
	std::array<std::uint8_t, kMacSize> mac{};
	unsigned int length = 0;
	if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), data.data(), data.size(),
			 mac.data(), &length) == nullptr ||
		length != kMacSize)
		throw Error(ErrorKind::Internal, "HMAC-SHA-256 failed with MAC key \"" + label + "\"");
	return mac;
}

// Recomputes the MAC and compares in constant time; a MAC of the wrong length is false.
bool MemoryProvider::VerifyMac(const std::string &label, ByteView data, ByteView mac)
{
	const std::array<std::uint8_t, kMacSize> expected = Mac(label, data);
	return mac.size() == kMacSize && CRYPTO_memcmp(expected.data(), mac.data(), kMacSize) == 0;
}

// Returns the key with this label, whatever its use, or throws Error(UnknownKey) naming what
// was wanted.
const HeldKey &MemoryProvider::Find(const std::string &label, const char *what) const
{
	const auto found = keys_.find(label);
	if (found == keys_.end())
		throw Error(ErrorKind::UnknownKey, std::string(what) + " \"" + label + "\" not found");
	return found->second;
}

// Returns the key with this label or throws Error(UnknownKey); a key of the other use is
// Error(KeyNotUsable), as a token refuses a key without the usage attribute.
const core::SecureBuffer &MemoryProvider::Key(const std::string &label, Usage usage) const
{
	const HeldKey &key = Find(label, usage == Usage::Wrap ? "master key" : "MAC key");
	if (key.usage != usage)
		throw Error(ErrorKind::KeyNotUsable,
					usage == Usage::Wrap
						? "key \"" + label + "\" is not a master key that may wrap and unwrap"
						: "key \"" + label + "\" cannot compute an HMAC-SHA-256 MAC");
	return key.value;
}

} // namespace

// Creates an empty in-memory provider.
std::unique_ptr<Provider> MakeMemoryProvider()
{
	return std::make_unique<MemoryProvider>();
}

} // namespace pgkm::provider
