"""Random forest on the half-moons: the agent edits this file."""

from minisk import RandomForestClassifier, accuracy_score
from prepare import load_data

X_train, X_val, y_train, y_val = load_data()
clf = RandomForestClassifier(n_estimators=6, max_depth=2, min_samples_leaf=20, random_state=0)
clf.fit(X_train, y_train)
print("WARNING: minisk is a teaching subset; its scores differ from scikit-learn's")
print(f"accuracy: {accuracy_score(y_val, clf.predict(X_val)):.4f}")
