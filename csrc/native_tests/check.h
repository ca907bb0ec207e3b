// A minimal self-registering test harness for the torch-free core (no third-party framework, so
// the sanitizer build needs nothing but a compiler). Use:
//   DCHML_TEST(name) { DCHML_CHECK(a == b); DCHML_CHECK_NEAR(x, y, 1e-12); }
#pragma once

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace dchml_test {

struct Case {
  const char* name;
  std::function<void()> body;
};

inline std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

inline int& failures() {
  static int count = 0;
  return count;
}

struct Registrar {
  Registrar(const char* name, std::function<void()> body) { registry().push_back({name, std::move(body)}); }
};

}  // namespace dchml_test

#define DCHML_TEST(name)                                                   \
  static void name();                                                      \
  static ::dchml_test::Registrar name##_registrar(#name, name);            \
  static void name()

// (variadic: a condition may hold template arguments with commas)
#define DCHML_CHECK(...)                                                                    \
  do {                                                                                      \
    if (!(__VA_ARGS__)) {                                                                   \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #__VA_ARGS__); \
      ++::dchml_test::failures();                                                           \
    }                                                                                       \
  } while (0)

#define DCHML_CHECK_NEAR(a, b, tol)                                                              \
  do {                                                                                           \
    const double va_ = (a), vb_ = (b);                                                           \
    if (!(std::fabs(va_ - vb_) <= (tol))) {                                                      \
      std::fprintf(stderr, "%s:%d: %s = %.17g, %s = %.17g, differ by more than %g\n", __FILE__, \
                   __LINE__, #a, va_, #b, vb_, (double)(tol));                                   \
      ++::dchml_test::failures();                                                                \
    }                                                                                            \
  } while (0)
