// One function per part of the module; each writes its results as DIR/<name>.npy.
#pragma once

#include <string>

namespace moe::golden {

void routing(const std::string& dir);   // routing.cpp
void dispatch(const std::string& dir);  // dispatch.cpp
void balance(const std::string& dir);   // balance.cpp
void health(const std::string& dir);    // health.cpp
void layer(const std::string& dir);     // layer.cpp

}  // namespace moe::golden
