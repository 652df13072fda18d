// The bad-input catalogue's check: an entry point given one bad argument must raise moe::Error
// whose message reads "<argument>: expected <what>, got <value>", naming the argument as the user
// wrote it, what it should have been and what it was.
#pragma once

#include <functional>
#include <string>
#include <typeinfo>

#include <moe/core/error.hpp>

#include "support/catch.hpp"

namespace moe::test {

/// Runs `call` and requires a moe::Error whose message starts with "<argument>: expected ", whose
/// expectation contains `expected` and whose given value (after ", got ") contains `given`.
/// One function, not a template: a catalogue calls it hundreds of times, and each instantiation
/// would repeat Catch's assertion machinery (the larger part of a catalogue's compile time).
inline void require_rejects(const std::function<void()>& call, const std::string& argument,
                            const std::string& expected, const std::string& given) {
  INFO("argument " << argument << ", expected '" << expected << "', given '" << given << "'");
  try {
    call();
  } catch (const moe::Error& error) {
    const std::string message = error.what();
    INFO("message: " << message);
    const std::string head = argument + ": expected ";
    const std::size_t got = message.rfind(", got ");
    REQUIRE(message.compare(0, head.size(), head) == 0);
    REQUIRE(got != std::string::npos);
    REQUIRE(got >= head.size());
    CHECK(message.substr(head.size(), got - head.size()).find(expected) != std::string::npos);
    CHECK(message.substr(got + 6).find(given) != std::string::npos);
    return;
  } catch (const std::exception& other) {
    FAIL("a " << typeid(other).name() << " instead of moe::Error: " << other.what());
  }
  FAIL("no exception");
}

}  // namespace moe::test
