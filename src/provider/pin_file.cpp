// The token PIN file: a small regular file that only the server's OS user can read.
#include "pgkm/core/error.hpp"
#include "pgkm/provider/provider.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace pgkm::provider
{

namespace
{

using core::Error;
using core::ErrorKind;

constexpr std::size_t kMaxPinFileSize = 256;
constexpr const char *kPermissionHint =
	"chmod 600 the file, and make the server's OS user its owner.";

// Closes a file descriptor when the reading scope ends, whatever way it ends.
class FdGuard
{
  public:
	explicit FdGuard(int fd) noexcept : fd_(fd) {}
	~FdGuard()
	{
		if (fd_ >= 0)
			close(fd_);
	}
	FdGuard(const FdGuard &) = delete;
	FdGuard &operator=(const FdGuard &) = delete;

	int get() const noexcept { return fd_; }

  private:
	int fd_;
};

// Quotes the path for messages; the path is configuration, never the secret.
std::string Quoted(const std::string &path)
{
	return "\"" + path + "\"";
}

constexpr const char *kPathHint =
	"Point pgkm.pkcs11_pin_file at the PIN file, readable by the server's OS user only, and "
	"reload; pgkm reads it again at the next login.";

// Names errno values in details, so that a detail says ENOENT and not only its text.
std::string ErrnoName(int error_number)
{
	switch (error_number)
	{
	case ENOENT:
		return "ENOENT";
	case EACCES:
		return "EACCES";
	case ENOTDIR:
		return "ENOTDIR";
	case EISDIR:
		return "EISDIR";
	case EIO:
		return "EIO";
	default:
		return "errno " + std::to_string(error_number);
	}
}

// Builds the error for a failed system call on the file, with errno's text and name.
Error SystemError(const char *what, const std::string &path, int error_number)
{
	return Error(ErrorKind::Configuration,
				 std::string("could not ") + what + " PIN file " + Quoted(path) + ": " +
					 std::strerror(error_number),
				 std::string(what) + "(): " + ErrnoName(error_number), kPathHint);
}

// Builds the error for a file over the size limit.
Error TooLarge(const std::string &path)
{
	return Error(ErrorKind::Configuration, "PIN file " + Quoted(path) + " is larger than " +
											   std::to_string(kMaxPinFileSize) + " bytes");
}

} // namespace

// Opens without following a final symlink and without blocking on a FIFO, checks the file's
// type, owner, mode and size on the open descriptor (no race with a rename), then reads it.
core::SecureBuffer ReadPinFile(const std::string &path, PinFileVersion *version)
{
	const int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	if (fd < 0)
	{
		const int error_number = errno;
		if (error_number == ELOOP)
			throw Error(ErrorKind::Configuration,
						"PIN file " + Quoted(path) + " must not be a symbolic link", {},
						"Point the setting at the file itself.");
		throw SystemError("open", path, error_number);
	}
	FdGuard guard(fd);

	struct stat status;
	if (fstat(fd, &status) != 0)
		throw SystemError("stat", path, errno);
	if (!S_ISREG(status.st_mode))
		throw Error(ErrorKind::Configuration, "PIN file " + Quoted(path) + " is not a regular file",
					{}, kPathHint);
	if (status.st_uid != geteuid() || (status.st_mode & 077) != 0)
	{
		char detail[128];
		std::snprintf(detail, sizeof(detail),
					  "The file has mode %04o and owner uid %u; the server runs as uid %u.",
					  static_cast<unsigned>(status.st_mode & 07777),
					  static_cast<unsigned>(status.st_uid), static_cast<unsigned>(geteuid()));
		throw Error(ErrorKind::Configuration,
					"PIN file " + Quoted(path) + " must be owned by the server's OS user" +
						" and have no group or world permissions",
					detail, kPermissionHint);
	}
	if (static_cast<std::size_t>(status.st_size) > kMaxPinFileSize)
		throw TooLarge(path);
	if (version != nullptr)
	{
		version->device = status.st_dev;
		version->inode = status.st_ino;
		version->size = status.st_size;
		version->mtime_ns = status.st_mtim.tv_sec * 1000000000LL + status.st_mtim.tv_nsec;
		version->ctime_ns = status.st_ctim.tv_sec * 1000000000LL + status.st_ctim.tv_nsec;
	}

	// One spare byte notices a file that grew after fstat.
	core::SecureBuffer buffer(kMaxPinFileSize + 1);
	std::size_t length = 0;
	while (length < buffer.size())
	{
		const ssize_t got = read(fd, buffer.data() + length, buffer.size() - length);
		if (got < 0)
		{
			if (errno == EINTR)
				continue;
			throw SystemError("read", path, errno);
		}
		if (got == 0)
			break;
		length += static_cast<std::size_t>(got);
	}
	if (length > kMaxPinFileSize)
		throw TooLarge(path);

	if (length > 0 && buffer.data()[length - 1] == '\n')
		--length;
	if (length > 0 && buffer.data()[length - 1] == '\r')
		--length;
	if (length == 0)
		throw Error(ErrorKind::Configuration, "PIN file " + Quoted(path) + " is empty", {},
					"Write the token's user PIN into the file.");

	return core::SecureBuffer::CopyOf(buffer.view().first(length));
}

} // namespace pgkm::provider
