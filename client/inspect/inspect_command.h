// `weightctl inspect [--json] [--hash] FILE`: offline metadata of a
// checkpoint, no daemon involved.
#ifndef WEIGHTD_CLIENT_INSPECT_INSPECT_COMMAND_H_
#define WEIGHTD_CLIENT_INSPECT_INSPECT_COMMAND_H_

#include <ostream>
#include <string>
#include <vector>

namespace weightd {

// `args` are the arguments after "inspect". Returns the exit status: 0 on
// success, 1 for a file that cannot be read (one line on `err` naming the file
// and the reason), 2 for a usage error.
int RunInspect(const std::vector<std::string>& args, std::ostream& out,
               std::ostream& err);

}  // namespace weightd

#endif  // WEIGHTD_CLIENT_INSPECT_INSPECT_COMMAND_H_
