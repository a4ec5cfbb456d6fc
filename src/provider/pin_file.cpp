// The token PIN file: a small regular file that only the server's OS user can read.
#include "pgkm/core/error.hpp"
#include "pgkm/provider/provider.hpp"

#include <cerrno>
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

// Builds the error for a failed system call on the file, with errno's text.
Error SystemError(const std::string &what, const std::string &path, int error_number)
{
	return Error(ErrorKind::Configuration, "could not " + what + " PIN file " + Quoted(path) +
											   ": " + std::strerror(error_number));
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
core::SecureBuffer ReadPinFile(const std::string &path)
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
		throw Error(ErrorKind::Configuration,
					"PIN file " + Quoted(path) + " is not a regular file");
	if (status.st_uid != geteuid() || (status.st_mode & 077) != 0)
		throw Error(ErrorKind::Configuration,
					"PIN file " + Quoted(path) + " must be owned by the server's OS user" +
						" and have no group or world permissions",
					{}, kPermissionHint);
	if (static_cast<std::size_t>(status.st_size) > kMaxPinFileSize)
		throw TooLarge(path);

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
		throw Error(ErrorKind::Configuration, "PIN file " + Quoted(path) + " is empty");

	return core::SecureBuffer::CopyOf(buffer.view().first(length));
}

} // namespace pgkm::provider
