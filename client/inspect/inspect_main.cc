// Standalone `inspect` for testing: inspect_main [--json] [--hash] FILE.
#include <iostream>
#include <string>
#include <vector>

#include "client/inspect/inspect_command.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  return weightd::RunInspect(args, std::cout, std::cerr);
}
