// weightctl's commands, one function each, testable without a process.
#ifndef WEIGHTD_CLIENT_COMMANDS_H_
#define WEIGHTD_CLIENT_COMMANDS_H_

#include <functional>
#include <map>
#include <ostream>
#include <string>
#include <vector>

namespace weightd {

using WeightctlCommand = std::function<int(
    const std::string& address, const std::vector<std::string>& args,
    std::ostream& out, std::ostream& err)>;

const std::map<std::string, WeightctlCommand>& WeightctlCommands();

}  // namespace weightd

#endif  // WEIGHTD_CLIENT_COMMANDS_H_
