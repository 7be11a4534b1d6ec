// Declaration shim: see ../../README.md. ProcessGroupGloo.hpp includes it but names nothing from it.
#pragma once
