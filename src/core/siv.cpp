// AES-256-SIV (RFC 5297) through OpenSSL's EVP interface, with the key set once per context.
#include "pgkm/core/siv.hpp"

#include "pgkm/core/error.hpp"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include <climits>
#include <cstring>
#include <string>
#include <vector>

namespace pgkm::core
{

namespace
{

inline constexpr std::size_t kHalfKey = kSivKeySize / 2;

// Reports an OpenSSL failure that is not an authentication failure.
[[noreturn]] void ThrowOpenSsl(const char *step)
{
	throw Error(ErrorKind::Internal, std::string("AES-256-SIV failed in OpenSSL: ") + step);
}

// OpenSSL's AES-256-SIV implementation, fetched once per process.
EVP_CIPHER *SivAlgorithm()
{
	static EVP_CIPHER *cipher = EVP_CIPHER_fetch(nullptr, "AES-256-SIV", nullptr);
	if (cipher == nullptr)
		ThrowOpenSsl("fetching AES-256-SIV");
	return cipher;
}

// header || context, RFC 5297's one associated-data component: on the stack for the usual
// short contexts (a row id), on the heap for longer ones, so a row costs no allocation.
class Associated
{
  public:
	Associated(ByteView header, ByteView context)
	{
		if (context.size() > INT_MAX - kHeaderSize)
			throw Error(ErrorKind::InvalidArgument, "context is too long for AES-256-SIV");
		size_ = header.size() + context.size();
		std::uint8_t *p = small_;
		if (size_ > sizeof(small_))
		{
			large_.resize(size_);
			p = large_.data();
		}
		std::memcpy(p, header.data(), header.size());
		if (!context.empty())
			std::memcpy(p + header.size(), context.data(), context.size());
	}
	const std::uint8_t *data() const { return size_ > sizeof(small_) ? large_.data() : small_; }
	std::size_t size() const { return size_; }
	operator ByteView() const { return ByteView(data(), size_); }

  private:
	std::uint8_t small_[256];
	std::vector<std::uint8_t> large_;
	std::size_t size_ = 0;
};

// Doubling in GF(2^128) as RFC 5297 (section 2.3) defines it for S2V.
void Double(std::uint8_t block[kSivIvSize])
{
	const std::uint8_t carry = block[0] >> 7;
	for (std::size_t i = 0; i + 1 < kSivIvSize; i++)
		block[i] = static_cast<std::uint8_t>((block[i] << 1) | (block[i + 1] >> 7));
	block[kSivIvSize - 1] =
		static_cast<std::uint8_t>((block[kSivIvSize - 1] << 1) ^ (carry * 0x87));
}

// One AES-256-CMAC of data under key (OpenSSL's EVP_MAC).
void Cmac(ByteView key, ByteView data, std::uint8_t out[kSivIvSize])
{
	EVP_MAC *mac = EVP_MAC_fetch(nullptr, "CMAC", nullptr);
	EVP_MAC_CTX *ctx = mac == nullptr ? nullptr : EVP_MAC_CTX_new(mac);
	char cipher_name[] = "AES-256-CBC";
	OSSL_PARAM params[] = {
		OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_CIPHER, cipher_name, 0),
		OSSL_PARAM_construct_end(),
	};
	std::size_t written = 0;
	const bool ok = ctx != nullptr && EVP_MAC_init(ctx, key.data(), key.size(), params) == 1 &&
					EVP_MAC_update(ctx, data.data(), data.size()) == 1 &&
					EVP_MAC_final(ctx, out, &written, kSivIvSize) == 1 && written == kSivIvSize;
	EVP_MAC_CTX_free(ctx);
	EVP_MAC_free(mac);
	if (!ok)
		ThrowOpenSsl("CMAC");
}

} // namespace

// Keeps the working key in a locked buffer; the context is made on first use.
SivCipher::SivCipher(ByteView key)
{
	if (key.size() != kSivKeySize)
		throw Error(ErrorKind::InvalidArgument, "an AES-256-SIV working key must be 64 bytes");
	key_ = SecureBuffer::CopyOf(key);
}

// Frees the contexts; the key buffer wipes itself.
SivCipher::~SivCipher()
{
	ReleaseContexts();
}

// Frees both contexts; OpenSSL wipes the key schedules they hold.
void SivCipher::ReleaseContexts() noexcept
{
	for (EVP_CIPHER_CTX *&ctx : keyed_)
	{
		EVP_CIPHER_CTX_free(ctx);
		ctx = nullptr;
	}
	EVP_CIPHER_CTX_free(work_);
	work_ = nullptr;
}

// OpenSSL 3.0 cannot restart a used SIV context without setting its key again (which costs
// several times the message): each message starts from a copy of the keyed context, whose key
// schedules are copied, not set up again.
EVP_CIPHER_CTX *SivCipher::Start(bool encrypt)
{
	if (work_ == nullptr && (work_ = EVP_CIPHER_CTX_new()) == nullptr)
		ThrowOpenSsl("context allocation");
	EVP_CIPHER_CTX *&keyed = keyed_[encrypt ? 1 : 0];
	if (keyed == nullptr)
	{
		keyed = EVP_CIPHER_CTX_new();
		if (keyed == nullptr || EVP_CipherInit_ex2(keyed, SivAlgorithm(), key_.data(), nullptr,
												   encrypt ? 1 : 0, nullptr) != 1)
		{
			EVP_CIPHER_CTX_free(keyed);
			keyed = nullptr;
			ThrowOpenSsl("key setup");
		}
	}
	if (EVP_CIPHER_CTX_copy(work_, keyed) != 1)
		ThrowOpenSsl("context copy");
	return work_;
}

// RFC 5297 S2V for the strings (associated, ""): D = CMAC(0); D = dbl(D) xor CMAC(ad);
// T = dbl(D) xor pad(""); V = CMAC(T). Only the empty plaintext takes this path.
void SivCipher::EmptyIv(ByteView associated, std::span<std::uint8_t, kSivIvSize> iv)
{
	const ByteView mac_key = key_.view().first(kHalfKey);
	std::uint8_t d[kSivIvSize];
	std::uint8_t s[kSivIvSize];
	const std::uint8_t zero[kSivIvSize] = {};
	Cmac(mac_key, ByteView(zero, kSivIvSize), d);
	Double(d);
	Cmac(mac_key, associated, s);
	for (std::size_t i = 0; i < kSivIvSize; i++)
		d[i] ^= s[i];
	Double(d);
	d[0] ^= 0x80;
	Cmac(mac_key, ByteView(d, kSivIvSize), iv.data());
	OPENSSL_cleanse(d, sizeof(d));
	OPENSSL_cleanse(s, sizeof(s));
}

// Writes header || V || C, authenticating header || context as one component.
void SivCipher::Seal(const Header &header, ByteView plaintext, ByteView context,
					 std::span<std::uint8_t> out)
{
	if (header.format != kFormatV1 || header.algorithm != Algorithm::Aes256Siv)
		throw Error(ErrorKind::Internal, "AES-256-SIV was asked to write a header of another kind");
	if (plaintext.size() > INT_MAX || out.size() != plaintext.size() + kSivOverhead)
		throw Error(ErrorKind::Internal, "AES-256-SIV output buffer has the wrong size");

	const auto header_out = out.first<kHeaderSize>();
	WriteHeader(header, header_out);
	const Associated ad(header_out, context);
	const auto iv = out.subspan<kHeaderSize, kSivIvSize>();
	if (plaintext.empty())
	{
		EmptyIv(ad, iv);
		return;
	}
	int written = 0;
	std::uint8_t sink[kSivIvSize];
	EVP_CIPHER_CTX *ctx = Start(true);
	if (EVP_EncryptUpdate(ctx, nullptr, &written, ad.data(), static_cast<int>(ad.size())) != 1 ||
		EVP_EncryptUpdate(ctx, out.data() + kSivOverhead, &written, plaintext.data(),
						  static_cast<int>(plaintext.size())) != 1 ||
		EVP_EncryptFinal_ex(ctx, sink, &written) != 1 ||
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, static_cast<int>(kSivIvSize), iv.data()) !=
			1)
		ThrowOpenSsl("encrypt");
}

// Opens header || V || C, checking V over header || context and the decrypted bytes.
void SivCipher::Open(ByteView ciphertext, ByteView context, std::span<std::uint8_t> out)
{
	if (ciphertext.size() < kSivOverhead || ciphertext[0] != kFormatV1 ||
		ciphertext[1] != static_cast<std::uint8_t>(Algorithm::Aes256Siv))
	{
		ParseHeader(ciphertext);
		throw Error(ErrorKind::Internal,
					"AES-256-SIV was asked to open a ciphertext of another kind");
	}
	const std::size_t body = ciphertext.size() - kSivOverhead;
	if (out.size() != body || body > INT_MAX)
		throw Error(ErrorKind::Internal, "AES-256-SIV output buffer has the wrong size");

	const Associated ad(ciphertext.first<kHeaderSize>(), context);
	const auto iv = ciphertext.subspan<kHeaderSize, kSivIvSize>();
	bool ok;
	if (body == 0)
	{
		std::uint8_t expected[kSivIvSize];
		EmptyIv(ad, expected);
		ok = CRYPTO_memcmp(expected, iv.data(), kSivIvSize) == 0;
	}
	else
	{
		int written = 0;
		std::uint8_t sink[kSivIvSize];
		std::uint8_t tag[kSivIvSize];
		std::memcpy(tag, iv.data(), kSivIvSize);
		EVP_CIPHER_CTX *ctx = Start(false);
		if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, static_cast<int>(kSivIvSize), tag) !=
				1 ||
			EVP_DecryptUpdate(ctx, nullptr, &written, ad.data(), static_cast<int>(ad.size())) != 1)
			ThrowOpenSsl("decrypt");
		// OpenSSL checks the synthetic IV in the update that decrypts (SIV needs the whole
		// message at once): a failure there, or in the final call, is an authentication failure.
		ok = EVP_DecryptUpdate(ctx, out.data(), &written, ciphertext.data() + kSivOverhead,
							   static_cast<int>(body)) == 1 &&
			 EVP_DecryptFinal_ex(ctx, sink, &written) == 1;
		if (!ok)
		{
			OPENSSL_cleanse(out.data(), out.size());
			ERR_clear_error(); // the failure is reported as ours; leave no stale OpenSSL error
		}
	}
	if (!ok)
		throw Error(ErrorKind::AuthenticationFailed, "ciphertext authentication failed",
					"The ciphertext was altered, or the context does not match the one used to "
					"encrypt it.");
}

} // namespace pgkm::core
