// Runs every DCHML_TEST registered by the other files of this folder; exit status 1 on failure.
#include "native_tests/check.h"

int main() {
  int passed = 0, failed = 0;
  for (const auto& c : dchml_test::registry()) {
    const int before = dchml_test::failures();
    c.body();
    const bool ok = dchml_test::failures() == before;
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", c.name);
    (ok ? passed : failed)++;
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
